"""Training throughput (images/s) of the book's ResNet with the Learner against a plain PyTorch
loop, in one process.

Both train the same architecture on the same MNIST-subset batches; repeats are interleaved and the
median is reported. On CUDA (automatic when available, or `--device cuda`) a second section uses
bf16 autocast and channels_last for both.
Usage: python benchmarks/vision_throughput.py [--device cpu|cuda|auto] [--images 1024] [--repeats 5]
       [--width 16]
"""

from __future__ import annotations
import argparse
import json
import statistics
from pathlib import Path

import torch
from torch import nn

from bigmodel_book.core import Timer, get_device, set_seed
from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.train.callbacks import MixedPrecision
from bigmodel_book.train.learner import Learner
from bigmodel_book.vision.models import ResNet, image_datasets


def loaders(n: int, bs: int, device) -> DataLoaders:
    train, _, _ = image_datasets('subset')
    x, y = train.arrays[0][:n], train.arrays[1][:n]
    return DataLoaders.from_datasets(ArrayDataset(x, y), bs=bs, device=device, drop_last=True)


def plain_epoch(model, opt, dl, device, amp: bool, channels_last: bool) -> None:
    model.train()
    for xb, yb in dl:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def section(
    device: torch.device, n: int, bs: int, repeats: int, width: int, amp: bool, channels_last: bool
) -> dict:
    dls = loaders(n, bs, device)
    n_img = len(dls.train) * bs
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    set_seed(0)
    learn = Learner(
        ResNet(width=width).to(memory_format=fmt),
        dls,
        nn.CrossEntropyLoss(),
        cbs=[MixedPrecision('bf16')] if amp else [],
        device=device,
        quiet=True,
    )
    plain = ResNet(width=width).to(device, memory_format=fmt)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01)
    learn.fit(1, lr=1e-3)
    plain_epoch(plain, opt, dls.train, device, amp, channels_last)  # warm-up
    t_learn, t_plain = [], []
    for _ in range(repeats):  # interleaved
        with Timer() as t:
            learn.fit(1, lr=1e-3)
        t_learn.append(t.elapsed)
        with Timer() as t:
            plain_epoch(plain, opt, dls.train, device, amp, channels_last)
        t_plain.append(t.elapsed)
    ips_learn, ips_plain = n_img / statistics.median(t_learn), n_img / statistics.median(t_plain)
    return dict(
        device=str(device),
        amp_bf16=amp,
        channels_last=channels_last,
        width=width,
        batch_size=bs,
        images_per_epoch=n_img,
        repeats=repeats,
        learner_images_per_s=ips_learn,
        plain_images_per_s=ips_plain,
        ratio_learner_over_plain=ips_learn / ips_plain,
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        '--device',
        default='auto',
        help="'cpu', 'cuda' or 'auto' (CPU section always; CUDA section when available)",
    )
    p.add_argument('--images', type=int, default=1024, help='training images per timed epoch')
    p.add_argument('--bs', type=int, default=128, help='batch size')
    p.add_argument('--repeats', type=int, default=5, help='interleaved timed epochs per contender')
    p.add_argument('--width', type=int, default=16, help='ResNet width')
    p.add_argument(
        '--out', type=Path, default=Path(__file__).parent / 'out' / 'vision_throughput.json'
    )
    args = p.parse_args(argv)
    want = args.device.lower()
    results = []
    if want in ('auto', 'cpu'):
        results.append(
            section(
                torch.device('cpu'), args.images, args.bs, args.repeats, args.width, False, False
            )
        )
    if want != 'cpu' and torch.cuda.is_available():
        dev = get_device('cuda')
        n = max(args.images, 4096)
        results.append(section(dev, n, args.bs, args.repeats, args.width, False, False))
        results.append(section(dev, n, args.bs, args.repeats, args.width, True, True))
    elif want.startswith('cuda'):
        raise SystemExit('CUDA was asked for but is not available here.')
    for r in results:
        print(
            f"{r['device']:>6} amp={r['amp_bf16']!s:5} channels_last={r['channels_last']!s:5}: "
            f"Learner {r['learner_images_per_s']:8.0f} img/s, "
            f"plain loop {r['plain_images_per_s']:8.0f} img/s, "
            f"ratio {r['ratio_learner_over_plain']:.3f}"
        )
    doc = dict(benchmark='vision_throughput', torch=torch.__version__, results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print('wrote', args.out)
    return doc


if __name__ == '__main__':
    main()
