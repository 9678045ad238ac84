"""GPT generation and training throughput: tokens/s with and without the key/value cache,
in the same process.

usage: python benchmarks/text_gpt.py [--device cpu|cuda|auto] [--quick]
Writes benchmarks/out/text_gpt.json. On CUDA it also measures training tokens/s in fp32 vs bf16
autocast with fused attention.
"""

from __future__ import annotations
import argparse, platform, statistics

import torch

from bigmodel_book.core import Timer, get_device, set_seed
from bigmodel_book.sequence.charlm import lm_loss
from bigmodel_book.text.gpt import GPT, generate
from _out import write_json


def generation(model: GPT, n_new: int, repeats: int) -> dict:
    "Median tokens/s of greedy generation with and without the cache, interleaved."
    start = [1] * 8
    assert generate(model, start, n_new, 0.0, use_cache=True) == generate(
        model, start, n_new, 0.0, use_cache=False
    )
    times = {True: [], False: []}
    for _ in range(repeats):
        for cache in (False, True):
            with Timer() as t:
                generate(model, start, n_new, 0.0, use_cache=cache)
            times[cache].append(t.elapsed)
    full, cached = statistics.median(times[False]), statistics.median(times[True])
    return dict(
        new_tokens=n_new,
        tokens_per_s_no_cache=n_new / full,
        tokens_per_s_cache=n_new / cached,
        cache_speedup=full / cached,
    )


def training(model: GPT, device, bs: int, steps: int, amp: bool) -> float:
    "Training tokens/s of `steps` AdamW steps on random ids (after 3 warm-up steps)."
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    T = model.block_size
    x = torch.randint(0, model.vocab_size, (bs, T + 1), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = lm_loss(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with Timer() as t:
        for _ in range(steps):
            step()
    return bs * T * steps / t.elapsed


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--device', default='auto')
    p.add_argument('--quick', action='store_true')
    args = p.parse_args(argv)
    set_seed(0)
    dev = get_device(args.device)
    out = dict(device=str(dev), torch=torch.__version__, machine=platform.machine())
    torch.set_grad_enabled(True)
    cfg = dict(vocab_size=80, block_size=256, d_model=128, n_heads=4, n_layers=4, dropout=0.0)
    model = GPT(**cfg).to(dev).eval()
    out['config'] = cfg
    out['generation'] = generation(model, 64 if args.quick else 240, 2 if args.quick else 5)
    gen = out['generation']
    print(
        f"[{dev}] generation: {gen['tokens_per_s_no_cache']:,.0f} tok/s without cache, "
        f"{gen['tokens_per_s_cache']:,.0f} with; speed-up {gen['cache_speedup']:.2f}x"
    )
    model.train()
    out['train_tokens_per_s_fp32'] = training(
        model,
        dev,
        8 if dev.type == 'cpu' else 64,
        3 if args.quick or dev.type == 'cpu' else 30,
        amp=False,
    )
    print(f"[{dev}] training fp32: {out['train_tokens_per_s_fp32']:,.0f} tok/s")
    if dev.type == 'cuda':
        big = dict(
            vocab_size=80, block_size=1024, d_model=768, n_heads=12, n_layers=12, dropout=0.0
        )
        for fused in (False, True):
            m = GPT(**big, fused=fused).to(dev)
            out[f'cuda_train_tokens_per_s_bf16_{"fused" if fused else "unfused"}'] = training(
                m, dev, 16, 20, amp=True
            )
        out['cuda_train_tokens_per_s_fp32_fused'] = training(
            GPT(**big).to(dev), dev, 16, 20, amp=False
        )
        out['cuda_config'] = big
        out['cuda_generation_large'] = generation(GPT(**big).to(dev).eval(), 500, 3)
        for k in [k for k in out if k.startswith('cuda_train')]:
            print(f"[cuda] {k}: {out[k]:,.0f}")
        speedup = out['cuda_generation_large']['cache_speedup']
        print(f"[cuda] large-model generation speed-up with cache: {speedup:.2f}x")
    write_json('text_gpt', out)
    return out


if __name__ == '__main__':
    main()
