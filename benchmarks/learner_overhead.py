"""How much does the Learner cost over a hand-written PyTorch loop?

Same model, data, seed, schedule and epochs, in one process; both runs alternate so that machine
noise hits both. The hand-written loop does what any honest loop does: one-cycle learning rate
per step, per-batch loss kept for the history, validation loss and accuracy every epoch. Prints
the median time ratio (goal: at most 1.05 on CPU) and writes JSON to
benchmarks/out/learner_overhead.json.

usage: python benchmarks/learner_overhead.py [--device cpu|cuda] [--repeats 5] [--epochs 3]
"""

import argparse, json, math, statistics
from pathlib import Path

import torch
from torch import nn

from bigmodel_book.core import Timer, get_device, set_seed
from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.train.learner import Learner, accuracy, sched_one_cycle

OUT = Path(__file__).parent / 'out'


def data(device, n=8192, d=256, classes=10, bs=128):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :classes] + 0.5 * torch.randn(n, classes, generator=g)).argmax(1)
    split = int(0.8 * n)
    return DataLoaders.from_datasets(
        ArrayDataset(x[:split], y[:split]), ArrayDataset(x[split:], y[split:]), bs=bs, device=device
    )


def model(d=256, h=512, classes=10):
    return nn.Sequential(
        nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, classes)
    )


def with_learner(dls, epochs, lr, device):
    set_seed(0)
    learn = Learner(
        model(), dls, nn.CrossEntropyLoss(), metrics=[accuracy], lr=lr, device=device, quiet=True
    )
    with Timer() as t:
        learn.fit(epochs)
    return t.elapsed, learn.recorder.history[-1]['valid_loss']


def by_hand(dls, epochs, lr, device):
    set_seed(0)
    net = model().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    loss_fn, total, it, losses = nn.CrossEntropyLoss(), epochs * len(dls.train), 0, []
    with Timer() as t:
        for epoch in range(epochs):
            net.train()
            for xb, yb in dls.train:
                xb, yb = xb.to(device), yb.to(device)
                for g in opt.param_groups:
                    g['lr'] = lr * sched_one_cycle(it / total)
                loss = loss_fn(net(xb), yb)
                if not torch.isfinite(loss):
                    raise RuntimeError('loss is not finite')
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                it += 1
            net.eval()
            with torch.no_grad():
                n, tot, preds, targs = 0, 0.0, [], []
                for xb, yb in dls.valid:
                    xb, yb = xb.to(device), yb.to(device)
                    out = net(xb)
                    tot += loss_fn(out, yb).float() * len(yb)
                    n += len(yb)
                    preds.append(out)
                    targs.append(yb)
                valid_loss = float(tot / n)
                float(accuracy(torch.cat(preds), torch.cat(targs)))
    return t.elapsed, valid_loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--epochs', type=int, default=3)
    args = ap.parse_args(argv)
    device = get_device(args.device)
    dls = data(device)
    with_learner(dls, 1, 1e-3, device)
    by_hand(dls, 1, 1e-3, device)  # warm-up
    learner_t, hand_t = [], []
    for _ in range(args.repeats):
        lt, lv = with_learner(dls, args.epochs, 1e-3, device)
        ht, hv = by_hand(dls, args.epochs, 1e-3, device)
        learner_t.append(lt)
        hand_t.append(ht)
    ratio = statistics.median(l / h for l, h in zip(learner_t, hand_t))
    res = dict(
        benchmark='learner_overhead',
        device=str(device),
        epochs=args.epochs,
        repeats=args.repeats,
        batches_per_epoch=len(dls.train),
        learner_s=statistics.median(learner_t),
        hand_loop_s=statistics.median(hand_t),
        ratio=ratio,
        goal=1.05 if device.type == 'cpu' else None,
        same_valid_loss=math.isclose(lv, hv, rel_tol=1e-4),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    OUT.mkdir(exist_ok=True)
    (OUT / f'learner_overhead_{device.type}.json').write_text(json.dumps(res, indent=1))
    print(
        f"Learner {res['learner_s']:.3f}s vs hand-written loop {res['hand_loop_s']:.3f}s "
        f"on {device}: ratio {ratio:.3f} "
        f"(goal <= 1.05 on CPU); same validation loss: {res['same_valid_loss']}"
    )
    return res


if __name__ == '__main__':
    main()
