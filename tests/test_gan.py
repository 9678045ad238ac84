"""Tests of bigmodel_book.gan: Fréchet distance vs scipy, precision/recall, bad input, the GAN
learner with callbacks, the recipes and the CLI."""

import json
import numpy as np
import pytest
import scipy.linalg
import torch

from bigmodel_book.core import set_seed
from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.train.callbacks import GradientAccumulation, GradientClip, MixedPrecision
from bigmodel_book.train.checkpoint import Checkpoint
from bigmodel_book.gan.dcgan import (
    VARIANTS,
    GANConfig,
    frechet_distance,
    gan_learner,
    interpolate,
    load_gan,
    make_gan,
    precision_recall,
    sample_grid,
    save_gan,
    train_gan,
)
from bigmodel_book.gan.game import (
    GAN,
    GANLearner,
    MLPDiscriminator,
    MLPGenerator,
    WassersteinGPLoss,
    gradient_penalty,
    mode_coverage,
    ring_centres,
    sample_ring,
)

torch.set_num_threads(1)


def scipy_frechet(a, b):
    m1, m2, c1, c2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return ((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_frechet_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(1.0, 2.0, size=(300, 6)) @ rng.normal(size=(6, 6))
    assert np.isclose(frechet_distance(a, b), scipy_frechet(a, b), rtol=1e-6, atol=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert np.isclose(
        frechet_distance(torch.tensor(a), torch.tensor(b)), frechet_distance(b, a), rtol=1e-6
    )


def test_frechet_bad_input():
    with pytest.raises(ValueError, match='dimension'):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match='2-D'):
        frechet_distance(np.zeros(5), np.zeros((5, 1)))


def test_precision_recall():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 2))
    p, r = precision_recall(real, real, k=3)
    assert p == 1.0 and r == 1.0
    far = real + 100
    assert precision_recall(real, far) == (0.0, 0.0)
    with pytest.raises(ValueError, match='more than k'):
        precision_recall(real[:3], real)


def test_bad_generator_input():
    cgan, dcgan = make_gan('cgan'), make_gan('dcgan')
    with pytest.raises(ValueError, match='Unknown class 10'):
        cgan.sample(4, labels=10)
    with pytest.raises(ValueError, match='Unknown class -1'):
        cgan.sample(2, labels=torch.tensor([1, -1]))
    with pytest.raises(ValueError, match='at least 1'):
        cgan.sample(0, labels=3)
    with pytest.raises(ValueError, match='at least 1'):
        dcgan.sample(0)
    with pytest.raises(ValueError, match=r'shape \[n, 64\]'):
        dcgan(torch.randn(3, 10))
    with pytest.raises(ValueError, match='zero latent'):
        dcgan(torch.randn(0, 64))
    with pytest.raises(TypeError, match='float tensor'):
        dcgan(torch.zeros(2, 64, dtype=torch.long))
    with pytest.raises(ValueError, match='conditional'):
        cgan.sample(3)
    with pytest.raises(ValueError, match='unconditional'):
        dcgan.sample(3, labels=1)
    with pytest.raises(TypeError, match='integers'):
        cgan.sample(2, labels=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match='Unknown GAN variant'):
        make_gan('vae')
    with pytest.raises(ValueError, match=r'images \[n, 1, 28, 28\]'):
        dcgan.discriminate(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match='steps'):
        interpolate(dcgan, torch.randn(64), torch.randn(64), steps=1)


def test_shapes_and_interpolation():
    for v in VARIANTS:
        g = make_gan(v)
        lab = torch.arange(5) if g.n_classes else None
        x = g.sample(5, lab, seed=0)
        assert x.shape == (5, 1, 28, 28) and x.abs().max() <= 1
        assert torch.equal(x, g.sample(5, lab, seed=0))
    ends = interpolate(make_gan('dcgan'), torch.zeros(64), torch.ones(64), steps=4)
    assert ends.shape == (4, 1, 28, 28)


def test_gradient_penalty_linear():
    a = torch.tensor([0.6, 0.8])
    assert gradient_penalty(lambda x: x @ a, torch.randn(8, 2), torch.randn(8, 2)).item() < 1e-10


def test_gradient_penalty_matches_finite_differences():
    "An MLP critic: the penalty equals (||grad|| - 1)^2 with gradients by central differences."
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
    ).double()
    critic = lambda x: net(x).squeeze(-1)
    real, fake = torch.randn(6, 2).double(), torch.randn(6, 2).double()
    torch.manual_seed(3)
    gp = gradient_penalty(critic, real, fake)
    torch.manual_seed(3)
    eps = torch.rand(6, 1, dtype=torch.float64)  # drawn as gradient_penalty draws it
    x, h = eps * real + (1 - eps) * fake, 1e-6
    with torch.no_grad():
        fd = torch.stack(
            [(critic(x + h * e) - critic(x - h * e)) / (2 * h) for e in torch.eye(2).double()], 1
        )
    assert gp.item() == pytest.approx(((fd.norm(dim=1) - 1) ** 2).mean().item(), rel=1e-5)
    # a critic whose gradient has norm 1 everywhere pays nothing; a steeper one pays
    assert gradient_penalty(lambda z: z.norm(dim=1), real + 10, fake + 10).item() < 1e-12
    assert gradient_penalty(lambda z: 3 * z.norm(dim=1), real + 10, fake + 10).item() == (
        pytest.approx(4.0, rel=1e-5)
    )
    with pytest.raises(ValueError, match='same shape'):
        gradient_penalty(critic, real, fake[:3])


def test_pacgan_packs_consecutive_rows():
    d = MLPDiscriminator(hidden=4, pack=3)
    x = torch.randn(10, 2)
    out = d(x)
    assert out.shape == (3,)  # the tenth row is dropped
    assert torch.allclose(out, d.net(x[:9].reshape(3, 6)).squeeze(1))
    with pytest.raises(ValueError, match='pack=3'):
        d(torch.randn(2, 2))
    with pytest.raises(ValueError, match='pack'):
        MLPDiscriminator(pack=0)


def test_mode_coverage_counts_modes_and_quality():
    centres = ring_centres()
    x, _ = sample_ring(800, seed=4)
    assert mode_coverage(x, centres)[0] == 8
    collapsed = centres[[0]].repeat(400, 1)  # every sample on one mode: quality 1, one mode
    assert mode_coverage(collapsed, centres) == (1, 1.0)
    far = torch.full((100, 2), 10.0)
    assert mode_coverage(far, centres) == (0, 0.0)


def toy_dls(n=256):
    x, m = sample_ring(n)
    return DataLoaders.from_datasets(
        ArrayDataset(x, m), ArrayDataset(x[:64], m[:64]), bs=32, drop_last=True, device='cpu'
    )


def toy_learner(cbs=(), loss_fn=None):
    set_seed(0)
    return GANLearner(
        GAN(MLPGenerator(), MLPDiscriminator()),
        toy_dls(),
        loss_fn,
        lr=1e-3,
        cbs=cbs,
        quiet=True,
        device='cpu',
    )


def test_learner_trains_both_networks_and_records_losses():
    learn = toy_learner(cbs=[GradientClip(1.0), GradientAccumulation(2)])
    g0 = [p.detach().clone() for p in learn.model.generator.parameters()]
    d0 = [p.detach().clone() for p in learn.model.discriminator.parameters()]
    learn.fit(2, sched='constant')
    assert any(not torch.equal(a, b) for a, b in zip(g0, learn.model.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, learn.model.discriminator.parameters()))
    row = learn.recorder.history[-1]
    assert {'d_loss', 'g_loss', 'valid_loss'} <= set(row) and np.isfinite(row['g_loss'])
    assert learn.train_iter == 2 * 4  # 8 batches per epoch, accumulation over 2


def test_wgan_and_bf16_autocast():
    learn = toy_learner(cbs=[MixedPrecision('bf16')], loss_fn=WassersteinGPLoss(1.0))
    learn.n_critic = 2
    learn.fit(1, sched='constant')
    assert np.isfinite(learn.recorder.history[-1]['d_loss'])


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    full = toy_learner()
    full.fit(2, sched='constant')
    part = toy_learner(cbs=[Checkpoint(tmp_path / 'ck')])
    part.fit(1, sched='constant')
    # a new learner resuming from the checkpoint after epoch 1 finishes epoch 2
    # and lands on the same weights
    resumed = toy_learner(cbs=[Checkpoint(tmp_path / 'ck')])
    set_seed(0)
    resumed.fit(2, sched='constant')
    assert set(resumed.opt.state_dict()) == {'d', 'g'}
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_cli_train_and_sample(tmp_path, capsys):
    from bigmodel_book.cli.commands import sample_main, train_gan_main

    out = tmp_path / 'run'
    metrics = train_gan_main(
        [
            '--variant',
            'cgan',
            '--epochs',
            '1',
            '--n-train',
            '128',
            '--bs',
            '32',
            '--out',
            str(out),
            '--quiet',
        ]
    )
    assert metrics['variant'] == 'cgan' and np.isfinite(metrics['g_loss'])
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['variant'] == 'cgan' and (out / 'model.safetensors').exists()
    info = sample_main(
        ['--checkpoint', str(out), '--n', '16', '--out', str(tmp_path / 'grid.png'), '--digit', '3']
    )
    assert (tmp_path / 'grid.png').stat().st_size > 100 and info['n'] == 16
    with pytest.raises(ValueError, match='Unknown class'):
        sample_main(['--checkpoint', str(out), '--digit', '11', '--out', str(tmp_path / 'x.png')])
    with pytest.raises(ValueError, match='at least 1'):
        sample_grid(out, n=0, out=tmp_path / 'x.png')
    with pytest.raises(FileNotFoundError, match='config.json'):
        sample_grid(tmp_path, out=tmp_path / 'x.png')


def test_recipe_defaults_and_run_without_out(tmp_path):
    cfg = GANConfig()
    assert (cfg.variant, cfg.epochs, cfg.lr, cfg.bs, cfg.width, cfg.n_train, cfg.out) == (
        'dcgan',
        15,
        5e-4,
        64,
        16,
        None,
        None,
    )
    learn, metrics = train_gan(
        GANConfig(epochs=1, n_train=64, bs=32, device='cpu', quiet=True, width=4)
    )
    assert metrics['task'] == 'gan' and metrics['epochs'] == 1 and np.isfinite(metrics['d_loss'])
    with pytest.raises(ValueError, match='width'):
        train_gan(GANConfig(width=0))
    folder = save_gan(learn.model, tmp_path / 'g', 'dcgan', 4)
    info = sample_grid(folder, n=4, out=tmp_path / 'g.png')
    assert info == {'variant': 'dcgan', 'n': 4, 'out': str(tmp_path / 'g.png')}
    with pytest.raises(ValueError, match='unconditional'):
        sample_grid(tmp_path / 'g', n=4, digit=3, out=tmp_path / 'g.png')


def test_save_load_roundtrip(tmp_path):
    g = make_gan('wgan-gp')
    save_gan(g, tmp_path, 'wgan-gp', 16)
    g2, cfg = load_gan(tmp_path / 'model.safetensors')
    assert cfg['variant'] == 'wgan-gp' and torch.equal(g.sample(3, seed=1), g2.sample(3, seed=1))


@pytest.mark.gpu
def test_gpu_amp_step():
    learn = gan_learner(
        'dcgan',
        make_gan('dcgan'),
        DataLoaders.from_datasets(
            ArrayDataset(torch.rand(128, 1, 28, 28) * 2 - 1, torch.zeros(128, dtype=torch.long)),
            bs=64,
            device='cuda',
        ),
        cbs=[MixedPrecision('fp16')],
        device='cuda',
    )
    learn.fit(1, sched='constant')
    assert np.isfinite(learn.recorder.history[-1]['g_loss'])
