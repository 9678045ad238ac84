"""Training throughput (examples/s) of BPR-MF and NeuMF steps through `ImplicitLearner` versus a
plain PyTorch loop, in one process.

usage: python benchmarks/recsys_throughput.py [--device cpu|cuda] [--repeats 5] [--bs 1024]
Writes benchmarks/out/recsys_throughput.json. On CUDA (automatic when available) it also measures
large batches.
"""

import argparse, json, statistics, time
from pathlib import Path

import torch

from bigmodel_book.core import get_device, set_seed
from bigmodel_book.data.external import load_movielens_100k
from bigmodel_book.recsys.data import encode_interactions, leave_last_out
from bigmodel_book.recsys.models import (
    BPRMF,
    ImplicitLearner,
    NeuMF,
    bce_implicit_loss,
    bpr_loss,
    pair_dls,
)


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def make(kind, data, dev):
    model = (
        BPRMF(data.n_users, data.n_items, 64)
        if kind == 'bpr'
        else NeuMF(data.n_users, data.n_items, 32, 32)
    )
    return model.to(dev), (bpr_loss, 1) if kind == 'bpr' else (bce_implicit_loss, 4)


def learner_run(kind, data, train, dev, bs, n_batches):
    "Examples/s of `ImplicitLearner.fit` for one epoch over the first `n_batches` batches."
    set_seed(0)
    model, (loss, n_neg) = make(kind, data, dev)
    dls = pair_dls(train.iloc[: bs * n_batches], None, bs=bs, device=dev)
    learn = ImplicitLearner(model, dls, loss, n_items=data.n_items, n_neg=n_neg, quiet=True)
    sync(dev)
    t = time.perf_counter()
    learn.fit(1, 1e-3)
    sync(dev)
    return bs * n_batches / (time.perf_counter() - t)


def plain_run(kind, data, train, dev, bs, n_batches):
    """Examples/s of a hand-written loop doing the same work: sample negatives, score, loss,
    backward, AdamW step."""
    set_seed(0)
    model, (loss_fn, n_neg) = make(kind, data, dev)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=0.01)
    u_all, i_all = (
        torch.as_tensor(train.user.to_numpy()[: bs * n_batches]),
        torch.as_tensor(train.item.to_numpy()[: bs * n_batches]),
    )
    sync(dev)
    t = time.perf_counter()
    perm = torch.randperm(len(u_all))
    for s in range(0, len(perm), bs):
        idx = perm[s : s + bs]
        u, i = u_all[idx].to(dev, non_blocking=True), i_all[idx].to(dev, non_blocking=True)
        neg = torch.randint(0, data.n_items, (len(u), n_neg), device=dev)
        loss = loss_fn(model(u, i), model(u, neg))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(dev)
    return bs * n_batches / (time.perf_counter() - t)


def measure(data, train, dev, bs, n_batches, repeats):
    out = {}
    for kind in ('bpr', 'neumf'):
        runs = {'learner': [], 'plain': []}
        learner_run(kind, data, train, dev, bs, 2)
        plain_run(kind, data, train, dev, bs, 2)  # warm-up
        for _ in range(repeats):  # interleaved repeats
            runs['learner'].append(learner_run(kind, data, train, dev, bs, n_batches))
            runs['plain'].append(plain_run(kind, data, train, dev, bs, n_batches))
        med = {k: statistics.median(v) for k, v in runs.items()}
        out[kind] = {
            'bs': bs,
            'learner_examples_per_s': med['learner'],
            'plain_examples_per_s': med['plain'],
            'ratio_learner_over_plain': med['learner'] / med['plain'],
        }
        print(
            f"{dev.type} {kind:6s} bs {bs:6d}: Learner {med['learner']:12,.0f} ex/s  "
            f"plain loop {med['plain']:12,.0f} ex/s  ratio {med['learner'] / med['plain']:.2f}"
        )
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='auto')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--bs', type=int, default=1024)
    p.add_argument('--batches', type=int, default=20)
    args = p.parse_args(argv)
    dev = get_device(args.device)
    data = encode_interactions(load_movielens_100k().ratings)
    train = leave_last_out(data)[0]
    res = {
        'device': str(dev),
        'torch': torch.__version__,
        'cpu': measure(data, train, torch.device('cpu'), args.bs, args.batches, args.repeats),
    }
    if dev.type == 'cuda':
        res['cuda'] = {
            f'bs{bs}': measure(
                data, train, dev, bs, max(2, min(args.batches, len(train) // bs)), args.repeats
            )
            for bs in (1024, 16384, 65536)
        }
    out = Path(__file__).resolve().parent / 'out'
    out.mkdir(exist_ok=True)
    (out / 'recsys_throughput.json').write_text(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    main()
