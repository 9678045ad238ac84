"""Fast decoding of the review GPT of 6.7/6.9: speculative decoding against plain greedy decoding
(same output, asserted), and greedy decoding with against without the key/value cache, as ratios of
median times in one process.

usage: python benchmarks/text_infer.py [--device cpu|cuda|auto] [--quick] [--k 3]
Writes benchmarks/out/text_infer.json. The target is the base model of 6.7 and the draft the
zero-block GPT of 6.9, both from the book's cache (trained there on first use, about a minute).
"""

from __future__ import annotations
import argparse, platform, statistics
from dataclasses import replace

import torch

from bigmodel_book.core import Timer, get_device, set_seed
from bigmodel_book.text.infer import decode, speculative_generate
from bigmodel_book.text.instruct import BaseConfig, pretrain_base, review_corpus, review_splits
from _out import write_json


def models(quick: bool, device):
    "The target and draft of 6.9 (the notebook's configs), from the cache or trained now."
    cfg = BaseConfig(
        vocab_size=320 if quick else 1024,
        bpe_reviews=120 if quick else 600,
        train_reviews=1500 if quick else 0,
        d_model=32 if quick else 64,
        n_layers=2 if quick else 3,
        block_size=96,
        windows=160 if quick else 1280,
        epochs=2 if quick else 4,
        n_test=2000,
        eval_chars=15_000 if quick else 100_000,
        seed=42,
        quiet=True,
    )
    target, tok, _ = pretrain_base(cfg)
    draft, _, _ = pretrain_base(replace(cfg, d_model=16 if quick else 32, n_layers=0))
    reviews = review_splits(cfg.n_valid, cfg.n_test, cfg.seed)['test']
    n = 4 if quick else 12
    prompts = [tok.encode(review_corpus(reviews.iloc[i : i + 1]))[:16] for i in range(n)]
    return target.to(device), draft.to(device), prompts


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with Timer() as t:
            fn()
        times.append(t.elapsed)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--device', default='cpu')
    p.add_argument('--quick', action='store_true')
    p.add_argument('--k', type=int, default=3, help='drafts per round')
    args = p.parse_args(argv)
    set_seed(0)
    torch.set_num_threads(1)
    dev = get_device(args.device)
    target, draft, prompts = models(args.quick, dev)
    n_new, repeats = (24, 2) if args.quick else (64, 5)
    runs = {
        'no_cache': lambda p: decode(target, p, n_new, use_cache=False),
        'cache': lambda p: decode(target, p, n_new),
        'speculative': lambda p: speculative_generate(target, draft, p, n_new, k=args.k)[0],
    }
    accepted = []
    for p in prompts:  # same output first
        out, stats = speculative_generate(target, draft, p, n_new, k=args.k)
        assert out == runs['cache'](p) == runs['no_cache'](p)
        accepted.append(stats.acceptance)
    totals = dict.fromkeys(runs, 0.0)
    for p in prompts:  # interleaved, so that load on the machine hits all three alike
        for name, fn in runs.items():
            totals[name] += median_time(lambda: fn(p), repeats)
    tokens = len(prompts) * n_new
    out = dict(
        device=str(dev),
        torch=torch.__version__,
        machine=platform.machine(),
        threads=1,
        k=args.k,
        prompts=len(prompts),
        new_tokens=n_new,
        acceptance=sum(accepted) / len(accepted),
        tokens_per_s={name: tokens / t for name, t in totals.items()},
        speculative_speedup=totals['cache'] / totals['speculative'],
        cache_speedup=totals['no_cache'] / totals['cache'],
    )
    print(
        f"[{dev}] greedy {out['tokens_per_s']['cache']:,.0f} tok/s with the cache, "
        f"{out['tokens_per_s']['no_cache']:,.0f} without (cache speed-up "
        f"{out['cache_speedup']:.2f}x); speculative k={args.k}: "
        f"{out['tokens_per_s']['speculative']:,.0f} tok/s, speed-up "
        f"{out['speculative_speedup']:.2f}x at acceptance {out['acceptance']:.2f}"
    )
    write_json('text_infer', out)
    return out


if __name__ == '__main__':
    main()
