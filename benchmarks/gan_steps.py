"""GAN training steps per second: the book's GANLearner (Learner with a GAN step) against a plain
hand-written loop, same process.

Both do the same work per batch (one discriminator and one generator update of the DCGAN on 28x28
images); the repeats are interleaved and the median is reported. On CUDA (``--device cuda`` or
automatically when available) it also measures bf16 autocast. Writes benchmarks/out/gan_steps.json.

    python benchmarks/gan_steps.py [--device cpu|cuda|auto] [--steps 20] [--repeats 3]
"""

from __future__ import annotations
import argparse, json, statistics, time
from pathlib import Path

import torch
import torch.nn.functional as F

from bigmodel_book.core import get_device, set_seed
from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.train.callbacks import MixedPrecision
from bigmodel_book.gan.dcgan import gan_learner, make_gan


def sync(dev):
    if dev.type == 'cuda':
        torch.cuda.synchronize()


def make_dls(steps, bs, dev):
    x = torch.rand(steps * bs, 1, 28, 28) * 2 - 1
    return DataLoaders.from_datasets(
        ArrayDataset(x, torch.zeros(len(x), dtype=torch.long)),
        bs=bs,
        device=dev,
        drop_last=True,
        num_workers=0,
    )


def learner_run(dls, dev, width, amp):
    set_seed(0)
    learn = gan_learner(
        'dcgan',
        make_gan('dcgan', width=width),
        dls,
        cbs=[MixedPrecision('bf16')] if amp else [],
        device=dev,
    )
    learn.dls.valid = None
    learn.fit(1, sched='constant')  # warm-up (and optimiser creation)
    sync(dev)
    t = time.perf_counter()
    learn.fit(1, sched='constant')
    sync(dev)
    return len(dls.train) / (time.perf_counter() - t)


def plain_run(dls, dev, width, amp):
    set_seed(0)
    gan = make_gan('dcgan', width=width).to(dev)
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gan.generator.parameters(), 2e-4, betas=(0.5, 0.999))
    ctx = (
        (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
        if amp
        else (lambda: torch.autocast(dev.type, enabled=False))
    )

    def epoch():
        for real, _ in dls.train:
            real = real.to(dev, non_blocking=True)
            with ctx():
                fake = gan.generator(torch.randn(len(real), gan.z_dim, device=dev))
                loss_d = (
                    F.softplus(-gan.discriminator(real).float()).mean()
                    + F.softplus(gan.discriminator(fake.detach()).float()).mean()
                )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            gan.discriminator.requires_grad_(False)
            with ctx():
                loss_g = F.softplus(-gan.discriminator(fake).float()).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            gan.discriminator.requires_grad_(True)

    epoch()
    sync(dev)
    t = time.perf_counter()
    epoch()
    sync(dev)
    return len(dls.train) / (time.perf_counter() - t)


def measure(dev, steps, bs, width, repeats, amp):
    dls = make_dls(steps, bs, dev)
    lrn, plain = [], []
    for _ in range(repeats):  # interleaved repeats
        lrn.append(learner_run(dls, dev, width, amp))
        plain.append(plain_run(dls, dev, width, amp))
    res = {
        'device': str(dev),
        'amp_bf16': amp,
        'batch_size': bs,
        'width': width,
        'steps': steps,
        'repeats': repeats,
        'learner_steps_per_s': statistics.median(lrn),
        'plain_steps_per_s': statistics.median(plain),
    }
    res['learner_over_plain'] = res['learner_steps_per_s'] / res['plain_steps_per_s']
    print(
        f"{dev} amp={amp}: GANLearner {res['learner_steps_per_s']:.1f} steps/s, "
        f"plain loop {res['plain_steps_per_s']:.1f} steps/s, ratio {res['learner_over_plain']:.3f}"
    )
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='auto')
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--bs', type=int, default=64)
    p.add_argument('--threads', type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    results = [measure(torch.device('cpu'), a.steps, a.bs, 16, a.repeats, False)]
    if a.device != 'cpu' and torch.cuda.is_available():
        dev = get_device('cuda')
        for amp in (False, True):
            results.append(measure(dev, max(a.steps, 50), 256, 64, a.repeats, amp))
    out = Path(__file__).resolve().parent / 'out'
    out.mkdir(exist_ok=True)
    (out / 'gan_steps.json').write_text(
        json.dumps(
            {'benchmark': 'gan_steps', 'torch': torch.__version__, 'results': results}, indent=1
        )
    )
    return results


if __name__ == '__main__':
    main()
