"""Trust and privacy (issue 18): DP-SGD's clip-and-noise step, the accountant, the membership
attack, FedAvg and secure aggregation: properties and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel_book.data.core import ArrayDataset
from bigmodel_book.trust.federated import (
    dirichlet_split,
    fedavg,
    local_update,
    masked_updates,
    pairwise_masks,
    unflatten_like,
    weighted_average,
)
from bigmodel_book.trust.privacy import (
    DPLearner,
    attack_auc,
    clip_per_example,
    dp_noisy_mean,
    noise_for_epsilon,
    per_example_grads,
    per_example_norms,
    poisson_loader,
    spent_epsilon,
)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, torch.randn(16, 6) * 3, torch.randint(0, 3, (16,))


def test_per_example_grads_match_one_at_a_time(batch):
    model, x, y = batch
    grads = per_example_grads(model, nn.CrossEntropyLoss(), x, y)
    for i in (0, 7, 15):
        model.zero_grad()
        nn.CrossEntropyLoss()(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            assert torch.allclose(grads[k][i], p.grad, atol=1e-6)


@pytest.mark.parametrize('c', [0.01, 0.5, 5.0])
def test_clipped_norms_at_most_c_and_small_ones_untouched(batch, c):
    model, x, y = batch
    grads = per_example_grads(model, nn.CrossEntropyLoss(), x, y)
    clipped, norms = clip_per_example(grads, c)
    after = per_example_norms(clipped)
    assert (after <= c * (1 + 1e-5)).all()
    small = norms <= c
    assert torch.allclose(after[small], norms[small])
    assert torch.allclose(after[~small], torch.full_like(after[~small], c))


def test_zero_noise_is_the_clipped_mean(batch):
    model, x, y = batch
    grads = per_example_grads(model, nn.CrossEntropyLoss(), x, y)
    clipped, _ = clip_per_example(grads, 0.3)
    out = dp_noisy_mean(grads, 0.3, noise_multiplier=0.0)
    for k in grads:
        assert torch.allclose(out[k], clipped[k].mean(0), atol=1e-7)
    out = dp_noisy_mean(grads, 0.3, noise_multiplier=0.0, expected_batch_size=32)
    assert all(torch.allclose(out[k], clipped[k].sum(0) / 32, atol=1e-7) for k in grads)


def test_noise_has_the_stated_deviation(batch):
    model, x, y = batch
    grads = {'w': torch.zeros(4, 20000)}
    out = dp_noisy_mean(grads, 2.0, 1.5, expected_batch_size=10,
                        generator=torch.Generator().manual_seed(0))['w']
    assert out.std().item() == pytest.approx(1.5 * 2.0 / 10, rel=0.03)


def test_dp_learner_trains_and_empty_batches_work(batch):
    model, x, y = batch
    from bigmodel_book.data.core import DataLoaders

    ds = ArrayDataset(x, y)
    learn = DPLearner(model, DataLoaders(poisson_loader(ds, 4, seed=1)), nn.CrossEntropyLoss(),
                      quiet=True, device='cpu', max_norm=1.0, noise_multiplier=0.5,
                      expected_batch_size=4)
    before = [p.detach().clone() for p in model.parameters()]
    learn.fit(2, lr=1e-2)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    empty = (torch.zeros(0, 6), torch.zeros(0, dtype=torch.long))
    learn.train_step(empty)  # a noise-only step must not fail


def test_accountant_round_trip():
    sigma = noise_for_epsilon(3.0, 1e-5, 0.1, 200)
    assert spent_epsilon(sigma, 0.1, 200, 1e-5) <= 3.0 + 0.02
    assert noise_for_epsilon(1.0, 1e-5, 0.1, 200) > sigma


def test_attack_auc():
    assert attack_auc([0.0, 0.1], [1.0, 2.0]) == 1.0
    assert attack_auc([1.0, 2.0], [0.0, 0.1]) == 0.0
    rng = np.random.default_rng(0)
    assert abs(attack_auc(rng.random(5000), rng.random(5000)) - 0.5) < 0.03


def test_privacy_bad_input(batch):
    model, x, y = batch
    grads = per_example_grads(model, nn.CrossEntropyLoss(), x, y)
    for bad, match in [
        (lambda: clip_per_example(grads, 0.0), 'max_norm'),
        (lambda: dp_noisy_mean(grads, 1.0, -1.0), 'noise_multiplier'),
        (lambda: per_example_grads(model, nn.CrossEntropyLoss(), x, y[:3]), 'one row per'),
        (lambda: noise_for_epsilon(0.0, 1e-5, 0.1, 10), 'epsilon > 0'),
        (lambda: noise_for_epsilon(1.0, 1e-5, 1.5, 10), 'sample_rate'),
        (lambda: poisson_loader(ArrayDataset(x, y), 0), 'batch_size'),
        (lambda: attack_auc([], [1.0]), 'non-empty'),
        (lambda: attack_auc([np.nan], [1.0]), 'non-finite'),
    ]:
        with pytest.raises(ValueError, match=match):
            bad()


def _clients(n=3, rows=12):
    torch.manual_seed(0)
    x, y = torch.randn(n * rows, 5), torch.randint(0, 3, (n * rows,))
    return [ArrayDataset(x[i::n], y[i::n]) for i in range(n)]


def _net():
    torch.manual_seed(1)
    return nn.Linear(5, 3)


def test_fedavg_of_identical_clients_equals_the_client():
    one = _clients()[0]
    same, _ = fedavg(_net, [one] * 4, rounds=3, lr=0.3, bs=len(one))
    alone, _ = fedavg(_net, [one], rounds=3, lr=0.3, bs=len(one))
    for k, v in alone.state_dict().items():
        assert torch.allclose(same.state_dict()[k], v, atol=1e-6)


def test_fedavg_one_full_batch_step_is_centralised_gradient_descent():
    parts = _clients()
    fed, hist = fedavg(_net, parts, rounds=1, lr=0.5, bs=12)
    union = ArrayDataset(torch.cat([p.arrays[0] for p in parts]),
                         torch.cat([p.arrays[1] for p in parts]))
    central = local_update(_net(), union, 1, 0.5, bs=len(union), seed=0)
    assert all(torch.allclose(fed.state_dict()[k], central[k], atol=1e-6) for k in central)
    assert hist == [{'round': 1, 'clients': 3}]


def test_weighted_average_weights_and_integer_buffers():
    a = {'w': torch.zeros(3), 'n': torch.tensor(5)}
    b = {'w': torch.ones(3), 'n': torch.tensor(9)}
    out = weighted_average([a, b], [1, 3])
    assert torch.allclose(out['w'], torch.full((3,), 0.75)) and out['n'].item() == 5


def test_masks_cancel_and_hide():
    m = pairwise_masks(5, 1000, seed=3)
    assert m.sum(0).abs().max().item() < 1e-6 * m.abs().max().item()
    states = [{'w': torch.randn(4000), 'b': torch.randn(10)} for _ in range(4)]
    sent = masked_updates(states, [1, 2, 3, 4], seed=0)
    total = unflatten_like(sent.sum(0) / 10, states[0])
    plain = weighted_average(states, [1, 2, 3, 4])
    assert all(torch.allclose(total[k], plain[k], atol=1e-6) for k in plain)
    real = torch.cat([states[0]['w'], states[0]['b']]).double()
    assert abs(np.corrcoef(sent[0].numpy(), real.numpy())[0, 1]) < 0.05


def test_dirichlet_split_is_a_partition_and_skews_with_alpha():
    y = np.repeat(np.arange(10), 100)
    for alpha in (None, 0.1, 100.0):
        parts = dirichlet_split(y, 10, alpha, seed=0)
        assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
    classes = lambda alpha: np.mean([
        (np.bincount(y[p], minlength=10) > 5).sum() for p in dirichlet_split(y, 10, alpha, seed=0)
    ])
    assert classes(0.1) < classes(100.0)


def test_federated_bad_input():
    parts = _clients()
    for bad, match in [
        (lambda: dirichlet_split([0, 1] * 5, 3, 0.5, min_size=10), 'Cannot give'),
        (lambda: dirichlet_split([0, 1] * 50, 3, 0.0), 'alpha'),
        (lambda: fedavg(_net, parts, rounds=0), 'rounds'),
        (lambda: fedavg(_net, parts, rounds=1, fraction=0.0), 'fraction'),
        (lambda: weighted_average([{'w': torch.zeros(1)}], [1, 2]), 'one weight'),
        (lambda: weighted_average([{'w': torch.zeros(1)}, {'v': torch.zeros(1)}], [1, 1]),
         'different keys'),
        (lambda: weighted_average([{'w': torch.zeros(1)}], [0]), 'positive sum'),
        (lambda: pairwise_masks(1, 10), '>= 2 clients'),
        (lambda: unflatten_like(torch.zeros(3), {'w': torch.zeros(2)}), 'flat vector'),
    ]:
        with pytest.raises(ValueError, match=match):
            bad()


# 10.3 attacks, encrypted inference, unsafe files and model cards -------------------------------
from pathlib import Path  # noqa: E402

from bigmodel_book.train.checkpoint import CheckpointError, load_weights  # noqa: E402
from bigmodel_book.trust.attacks import fgsm, model_card, pgd, scan_pickle  # noqa: E402


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_attacks_stay_in_the_ball_and_pgd_is_stronger():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    xf, xp = fgsm(net, x, y, 0.1), pgd(net, x, y, 0.1, steps=10, restarts=2)
    for xa in (xf, xp):
        assert (xa - x).abs().max() <= 0.1 + 1e-6 and 0 <= xa.min() and xa.max() <= 1
    loss = lambda xa: nn.functional.cross_entropy(net(xa), y).item()
    assert loss(xp) >= loss(xf) - 1e-4 >= loss(x) - 1e-3
    with pytest.raises(ValueError, match='eps'):
        fgsm(net, x, y, -0.1)
    with pytest.raises(ValueError, match='steps'):
        pgd(net, x, y, 0.1, steps=0)


def test_no_loader_of_the_book_runs_a_pickle(tmp_path):
    marker = tmp_path / 'marker'
    evil = tmp_path / 'model.pt'
    torch.save({'w': torch.zeros(2), 'x': _Payload(marker)}, evil)
    with pytest.raises(CheckpointError):
        load_weights(nn.Linear(2, 1), evil)
    with pytest.raises(Exception):
        torch.load(evil, weights_only=True)
    assert not marker.exists()
    flagged = [g for g, ok in scan_pickle(evil.read_bytes()) if not ok]
    assert any(g.startswith('pathlib') for g in flagged) and not marker.exists()
    safe = tmp_path / 'safe.pt'
    torch.save({'w': torch.zeros(2)}, safe)
    assert all(ok for _, ok in scan_pickle(safe.read_bytes()))
    with pytest.raises(ValueError, match='pickle'):
        scan_pickle(b'not a pickle')


def test_model_card_holds_every_recorded_metric():
    rows = [
        dict(task='t', model='m', metric='accuracy', value=0.91234, interval=[0.9, 0.93]),
        dict(task='t', model='m', metric='AUC', value=0.5123),
        dict(task='t', model='other', metric='accuracy', value=0.1),
    ]
    card = model_card(rows, 'm', intended_use='u', limitations='l', licence='MIT', data='d')
    assert '0.9123' in card and '0.5123' in card and '[0.9, 0.93]' in card and '0.1 |' not in card
    with pytest.raises(ValueError, match='No recorded results'):
        model_card(rows, 'x', intended_use='u', limitations='l', licence='MIT', data='d')


def test_encrypted_logits_match_plaintext():
    from bigmodel_book.trust.attacks import ckks_context, encrypted_logits

    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(3, 30)), rng.normal(size=30)
    ctx = ckks_context()
    z, info = encrypted_logits(ctx, x, w, 0.5)
    assert np.abs(z - (x @ w + 0.5)).max() < 1e-3
    assert info['ciphertext_bytes'] > 100 * info['plaintext_bytes']
    with pytest.raises(ValueError, match='match the weights'):
        encrypted_logits(ctx, x[:, :4], w, 0.5)


def _library_loaders() -> set[str]:
    "Every function of the library that reads a data set: `load_*` ones plus the named others."
    import importlib, inspect, pkgutil

    import bigmodel_book

    found = set()
    for info in pkgutil.walk_packages(bigmodel_book.__path__, 'bigmodel_book.'):
        if info.name.count('.') < 2:
            continue  # the first edition's import paths repeat the subpackages' functions
        mod = importlib.import_module(info.name)
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            reads = name.startswith('load_') and 'data' in inspect.getsource(fn).lower()
            if fn.__module__ == mod.__name__ and reads:
                found.add(f"{info.name.removeprefix('bigmodel_book.')}.{name}")
    not_data = {'train.checkpoint.load_weights', 'train.checkpoint.load_checkpoint',
                'lifecycle.export.load_model_dir', 'lifecycle.serve.load_test',
                'text.gpt.load_gpt', 'gan.dcgan.load_gan', 'speech.data.load_audio'}
    return found - not_data


def test_every_data_loader_has_a_licence_row():
    import importlib

    from bigmodel_book.trust.attacks import DATA_SOURCES, licence_table

    listed = {name for d in DATA_SOURCES for name in d['loaders']}
    missing = _library_loaders() - listed
    assert not missing, f'add these loaders to DATA_SOURCES with their licence: {sorted(missing)}'
    for name in listed:  # every listed loader exists
        module, fn = name.rsplit('.', 1)
        assert hasattr(importlib.import_module(f'bigmodel_book.{module}'), fn), name
    table = licence_table()
    assert len(table) == len(DATA_SOURCES) and table.licence.str.len().min() > 5
    assert (table.package_licence != 'not installed').all(), table[['package', 'package_licence']]


def test_exported_model_card_holds_every_run_metric(tmp_path):
    from bigmodel_book.cli.commands import export_main
    from bigmodel_book.train.checkpoint import DigitsConfig, train_digits

    run = tmp_path / 'run'
    _, metrics = train_digits(DigitsConfig(epochs=1, out=run, quiet=True))
    out = export_main(['--checkpoint', str(run), '--builder', 'bigmodel_book.train.learner:mlp',
                       '--input-shape', '64', '--formats', '--out', str(tmp_path / 'model')])
    card = (out / 'MODEL_CARD.md').read_text()
    numbers = [v for k, v in metrics.items() if isinstance(v, float)]
    assert numbers and all(f'{v:.6g}' in card for v in numbers), card
    assert '8x8 handwritten digits' in card and 'CC BY 4.0' in card
    bare = export_main(['--checkpoint', str(run / 'model.safetensors'), '--builder',
                        'bigmodel_book.train.learner:mlp', '--input-shape', '64', '--formats',
                        '--out', str(tmp_path / 'model2')])
    assert 'CC BY 4.0' in (bare / 'MODEL_CARD.md').read_text()


def test_shadow_attack_features_and_model():
    import numpy as np

    from bigmodel_book.trust.privacy import attack_features, fit_attack

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x, y = torch.rand(50, 1, 4, 4), torch.randint(0, 4, (50,))
    f = attack_features(net, x, y, bs=7)
    assert f.shape == (50, 5) and (f[:, 0] <= 0).all() and (f[:, 4] >= 0).all()
    assert (np.diff(f[:, 1:4], axis=1) <= 0).all() and np.allclose(f, attack_features(net, x, y))
    rng = np.random.default_rng(0)
    member, other = rng.normal(1, 0.3, (200, 5)), rng.normal(-1, 0.3, (200, 5))
    attack = fit_attack([member[:100]], [other[:100]])
    assert attack.predict_proba(member[100:])[:, 1].mean() > 0.9
    with pytest.raises(ValueError, match='as many labels'):
        attack_features(net, x, y[:3])
    with pytest.raises(ValueError, match='>= 3 classes'):
        attack_features(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), x, y % 2)
    with pytest.raises(ValueError, match='shadow model'):
        fit_attack([], [])
