"""From-scratch LSTM (bigmodel_book.sequence.cells.Recurrent) against torch.nn.LSTM.

Measures training tokens per second (forward + backward). Interleaved repeats in one process,
median time per batch; prints the ratio and writes benchmarks/out/sequence_lstm.json.
CPU by default; a CUDA section (cuDNN, and bf16 autocast) runs when CUDA is available or with
--device cuda. `--compile` adds torch.compile of the from-scratch layer (slow to compile on a
CPU, so off by default).

    python benchmarks/sequence_lstm.py [--device cpu|cuda|auto] [--repeats 5] [--compile]
"""

import argparse, statistics, time

import torch
from torch import nn

from bigmodel_book.sequence.cells import Recurrent, copy_from_torch
from _out import write_json


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def time_step(model, x, dev, amp):
    ctx = (
        torch.autocast(dev.type, dtype=torch.bfloat16)
        if amp
        else torch.autocast(dev.type, enabled=False)
    )
    sync(dev)
    t = time.perf_counter()
    with ctx:
        out = model(x)[0]
    out.float().square().mean().backward()
    sync(dev)
    return time.perf_counter() - t


def bench(dev, B, T, I, H, layers, repeats, compile_, amp=False):
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, layers, batch_first=True).to(dev)
    ours = copy_from_torch(Recurrent('lstm', I, H, layers, batch_first=True), ref.cpu()).to(dev)
    ref = ref.to(dev)
    models = {'torch.nn.LSTM': ref, 'ours (Python time loop)': ours}
    if compile_:
        try:
            models['ours + torch.compile'] = torch.compile(ours)
        except Exception as e:
            print('torch.compile unavailable:', e)
    x = torch.randn(B, T, I, device=dev)
    times = {k: [] for k in models}
    for k, m in list(models.items()):  # warm-up (and compile)
        try:
            time_step(m, x, dev, amp)
        except Exception as e:
            print(f'{k} failed: {type(e).__name__}: {e}')
            del models[k], times[k]
    for _ in range(repeats):  # interleaved repeats
        for k, m in models.items():
            times[k].append(time_step(m, x, dev, amp))
    res = {
        k: dict(median_s=statistics.median(v), tokens_per_s=B * T / statistics.median(v))
        for k, v in times.items()
    }
    base = res['torch.nn.LSTM']['tokens_per_s']
    for k in res:
        res[k]['ratio_vs_torch'] = res[k]['tokens_per_s'] / base
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='auto')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--steps', type=int, default=32)
    p.add_argument('--hidden', type=int, default=128)
    p.add_argument('--layers', type=int, default=1)
    p.add_argument('--compile', action='store_true')
    args = p.parse_args(argv)
    devices = (
        ['cpu']
        if args.device == 'cpu'
        else ['cuda']
        if args.device == 'cuda'
        else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    )
    out = dict(config=vars(args), torch=torch.__version__, results={})
    for d in devices:
        dev = torch.device(d)
        cases = [('fp32', False)] + ([('bf16 autocast', True)] if d == 'cuda' else [])
        for name, amp in cases:
            key = f'{d} {name}'
            out['results'][key] = r = bench(
                dev,
                args.batch,
                args.steps,
                args.hidden,
                args.hidden,
                args.layers,
                args.repeats,
                args.compile,
                amp,
            )
            print(
                f"== {key}: batch {args.batch} x {args.steps} steps, hidden {args.hidden}, "
                f"{args.layers} layers (forward + backward)"
            )
            for k, v in r.items():
                print(
                    f"  {k:28s} {v['tokens_per_s']:>12,.0f} tokens/s   "
                    f"ratio vs torch {v['ratio_vs_torch']:.3f}"
                )
    write_json('sequence_lstm', out)
    return out


if __name__ == '__main__':
    main()
