"""Step time of the GPT with and without activation checkpointing, and of a mixture-of-experts GPT
against its dense baselines (tokens/s), in one process.

usage: python benchmarks/scale_checkpoint.py [--device cpu|cuda|auto] [--quick]
Writes benchmarks/out/scale_checkpoint.json. The variants are timed interleaved (round-robin) and
the median step time over repeats is reported with its ratio to the plain model.
"""

from __future__ import annotations
import argparse, platform, statistics, time

import torch

from bigmodel_book.core import get_device, set_seed
from bigmodel_book.scale.memory import set_checkpointing
from bigmodel_book.scale.moe import dense_gpt, moe_gpt
from bigmodel_book.sequence.charlm import lm_loss
from bigmodel_book.text.gpt import GPT
from _out import write_json


def step_times(models: dict, batch: tuple, repeats: int, sync) -> dict:
    "Median seconds of one forward, backward and AdamW step of every model, measured round-robin."
    opts = {n: torch.optim.AdamW(m.parameters()) for n, m in models.items()}
    times = {n: [] for n in models}
    for i in range(repeats + 1):
        for n, m in models.items():
            sync()
            t = time.perf_counter()
            lm_loss(m(batch[0]), batch[1]).backward()
            opts[n].step()
            opts[n].zero_grad(set_to_none=True)
            sync()
            if i:  # the first round warms up
                times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--device', default='auto')
    p.add_argument('--quick', action='store_true')
    args = p.parse_args(argv)
    dev = get_device(None if args.device == 'auto' else args.device)
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    big = dev.type == 'cuda' and not args.quick
    V, T, d, L, B = 80, (1024 if big else 128), (512 if big else 128), (8 if big else 4), 8
    repeats = 3 if args.quick else 10
    set_seed(0)
    x = torch.randint(0, V, (B, T), device=dev)
    batch = (x, x.roll(-1, 1))
    plain = GPT(V, T, d, 4, L, dropout=0.0).to(dev)
    ckpt = set_checkpointing(GPT(V, T, d, 4, L, dropout=0.0).to(dev), True)
    out = dict(device=str(dev), torch=torch.__version__, machine=platform.machine(),
               config=dict(vocab_size=V, block_size=T, d_model=d, n_layers=L, batch=B))
    s = step_times({'plain': plain, 'checkpointing': ckpt}, batch, repeats, sync)
    out['checkpoint_step_s'] = s
    out['checkpoint_time_ratio'] = s['checkpointing'] / s['plain']
    print(f"[{dev}] checkpointing step time x{out['checkpoint_time_ratio']:.2f} of plain")
    models = {
        'dense_active': dense_gpt(V, T, d, 4, L, 4 * d, dropout=0.0),
        'moe_4x_top1': moe_gpt(V, T, d, 4, L, 4, 1, 1.25, dropout=0.0),
        'dense_total': dense_gpt(V, T, d, 4, L, 16 * d, dropout=0.0),
    }
    s = step_times({n: m.to(dev) for n, m in models.items()}, batch, repeats, sync)
    out['moe_tokens_per_s'] = {n: B * T / v for n, v in s.items()}
    out['moe_speed_ratio_to_dense_active'] = s['dense_active'] / s['moe_4x_top1']
    for n, v in out['moe_tokens_per_s'].items():
        print(f"[{dev}] training {n}: {v:,.0f} tokens/s")
    write_json('scale_checkpoint', out)
    return out


if __name__ == '__main__':
    main()
