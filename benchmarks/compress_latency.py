"""Latency and size of LeNet-5 in fp32 (baseline), 90% magnitude-pruned, int8 dynamic and int8
static, in one process.

Usage: python benchmarks/compress_latency.py [--device cpu|cuda] [--repeats N] [--batch B]
Writes benchmarks/out/compress_latency.json. Weights are random (latency and size do not depend
on training); the variants are timed interleaved (round-robin), and the median over repeats is
reported with its ratio to fp32. int8 kernels of torch.ao run on the CPU only; the CUDA section
compares fp32 with bf16 autocast and the pruned model."""

import argparse, json, platform, statistics, sys, time
from pathlib import Path

import torch
from torch import nn

from bigmodel_book.lifecycle.compress import (
    magnitude_prune,
    quantize_dynamic_int8,
    quantize_static_int8,
    sparsity,
)
from bigmodel_book.lifecycle.distill import size_bytes
from bigmodel_book.vision.models import LeNet5


def traceable(net):
    return nn.Sequential(
        net.features, net.head
    )  # LeNet5.forward validates its input, which torch.fx cannot trace


def timed(variants: dict, xs: dict, repeats: int, sync=lambda: None) -> dict:
    "Median milliseconds per call of every variant on every input, measured round-robin."
    out = {n: {k: [] for k in xs} for n in variants}
    with torch.inference_mode():
        for m in variants.values():
            for x in xs.values():
                m(x)
                m(x)
        for _ in range(repeats):
            for n, m in variants.items():
                for k, x in xs.items():
                    sync()
                    t = time.perf_counter()
                    m(x)
                    sync()
                    out[n][k].append(1000 * (time.perf_counter() - t))
    return {n: {k: statistics.median(v) for k, v in d.items()} for n, d in out.items()}


def cpu_section(repeats: int, batch: int) -> dict:
    torch.manual_seed(0)
    base = LeNet5(n_classes=10).eval()
    calib = [torch.rand(64, 1, 28, 28) for _ in range(4)]
    variants = {
        'fp32': base,
        'pruned90': magnitude_prune(base, 0.9).eval(),
        'int8_dynamic': quantize_dynamic_int8(base),
        'int8_static': quantize_static_int8(traceable(base), calib, n_batches=4),
    }
    xs = {'batch1': torch.rand(1, 1, 28, 28), f'batch{batch}': torch.rand(batch, 1, 28, 28)}
    lat = timed(variants, xs, repeats)
    res = {}
    for n, m in variants.items():
        res[n] = dict(size_bytes=size_bytes(m), **{f'latency_{k}_ms': v for k, v in lat[n].items()})
        res[n]['size_ratio_vs_fp32'] = res['fp32']['size_bytes'] / res[n]['size_bytes']
        for k in xs:
            res[n][f'speedup_{k}_vs_fp32'] = lat['fp32'][k] / lat[n][k]
    res['pruned90']['sparsity'] = sparsity(variants['pruned90'])
    return res


def cuda_section(repeats: int, batch: int) -> dict:
    torch.manual_seed(0)
    dev = torch.device('cuda')
    base = LeNet5(n_classes=10).to(dev).eval()

    class BF16(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            with torch.autocast('cuda', dtype=torch.bfloat16):
                return self.m(x)

    variants = {
        'fp32': base,
        'pruned90': magnitude_prune(base, 0.9).to(dev).eval(),
        'bf16_autocast': BF16(base),
    }
    xs = {
        'batch1': torch.rand(1, 1, 28, 28, device=dev),
        f'batch{batch}': torch.rand(batch, 1, 28, 28, device=dev),
    }
    lat = timed(variants, xs, repeats, sync=torch.cuda.synchronize)
    return {
        n: {
            **{f'latency_{k}_ms': v for k, v in lat[n].items()},
            **{f'speedup_{k}_vs_fp32': lat['fp32'][k] / lat[n][k] for k in xs},
        }
        for n in variants
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        '--device',
        choices=['cpu', 'cuda', 'auto'],
        default='auto',
        help="'auto' adds the CUDA section when CUDA is available",
    )
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--batch', type=int, default=256)
    p.add_argument(
        '--out',
        type=Path,
        default=Path(__file__).resolve().parent / 'out' / 'compress_latency.json',
    )
    args = p.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit("--device cuda was asked for, but CUDA is not available.")
    doc = dict(
        benchmark='compress_latency',
        model='LeNet5 (random weights)',
        torch=torch.__version__,
        machine=platform.machine(),
        threads=torch.get_num_threads(),
        quantized_engine=torch.backends.quantized.engine,
        repeats=args.repeats,
        batch=args.batch,
        cpu=cpu_section(args.repeats, args.batch),
    )
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        doc['cuda'] = dict(
            device=torch.cuda.get_device_name(), **cuda_section(args.repeats, args.batch)
        )
    for section in ('cpu', 'cuda'):
        for n, r in doc.get(section, {}).items():
            if not isinstance(r, dict):
                continue
            print(
                f"{section:4} {n:13} "
                + '  '.join(f"{k}={v:.3g}" for k, v in r.items() if isinstance(v, (int, float)))
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == '__main__':
    main()
