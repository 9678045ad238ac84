"""Tests for bigmodel_book.lifecycle.distill (distillation loss and learner, size and latency)
and bigmodel_book.lifecycle.compress (pruning, int8 quantisation)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.lifecycle.compress import (
    magnitude_prune,
    make_permanent,
    quantize_dynamic_int8,
    quantize_static_int8,
    sparsity,
)
from bigmodel_book.lifecycle.distill import (
    DistillationLearner,
    TeacherLogits,
    count_params,
    distillation_loss,
    latency_ms,
    size_bytes,
)
from bigmodel_book.train.learner import Learner, accuracy


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 3),
    )


def data(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + (
        x.mean((1, 2, 3)) > 0.52
    ).long()
    return DataLoaders.from_datasets(
        ArrayDataset(x, y),
        ArrayDataset(x[:32], y[:32]),
        ArrayDataset(x[:32], y[:32]),
        bs=16,
        device='cpu',
    )


def test_distillation_loss_limits_and_gradient():
    torch.manual_seed(1)
    z, v, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    assert torch.allclose(distillation_loss(z, v, y, T=2, alpha=0), F.cross_entropy(z, y))
    assert distillation_loss(v, v, y, T=2, alpha=1).abs() < 1e-6
    zg = z.clone().requires_grad_()
    distillation_loss(zg, v, y, T=2, alpha=1).backward()
    assert torch.allclose(zg.grad, 2 * (F.softmax(z / 2, -1) - F.softmax(v / 2, -1)) / 6, atol=1e-6)


@pytest.mark.parametrize('kwargs, match', [(dict(T=0), 'temperature'), (dict(alpha=-0.1), 'alpha')])
def test_distillation_loss_bad_arguments(kwargs, match):
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match=match):
        distillation_loss(z, z, torch.zeros(4, dtype=torch.long), **kwargs)


def test_distillation_loss_bad_shapes():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match='equal shapes'):
        distillation_loss(z, torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='equal shapes'):
        distillation_loss(z[0], z[0], torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match='target'):
        distillation_loss(z, z, torch.zeros(3, dtype=torch.long))


def test_distillation_learner_trains_student_not_teacher():
    dls = data()
    teacher = cnn()
    Learner(teacher, dls, nn.CrossEntropyLoss(), quiet=True).fit(2, lr=1e-2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    s0 = student[1].weight.detach().clone()
    learn = DistillationLearner(
        student, teacher, dls, T=3, alpha=0.7, metrics=[accuracy], quiet=True
    )
    learn.fit(2, lr=1e-2)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(student[1].weight, s0) and not teacher.training
    assert 'accuracy' in learn.recorder.history[-1]
    with pytest.raises(ValueError):
        DistillationLearner(student, teacher, dls, alpha=2)


def test_distillation_learner_alpha_zero_is_plain_training_without_teacher():
    teacher = cnn()
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    torch.manual_seed(1)
    s1 = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    torch.manual_seed(1)
    s2 = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    torch.manual_seed(2)
    DistillationLearner(s1, teacher, data(), T=3, alpha=0.0, quiet=True).fit(1, lr=1e-2)
    torch.manual_seed(2)
    Learner(s2, data(), nn.CrossEntropyLoss(), quiet=True).fit(1, lr=1e-2)
    assert not calls and torch.allclose(s1[1].weight, s2[1].weight, atol=1e-6)


def test_cached_teacher_logits_train_the_same_student():
    teacher, dls = cnn(), data()
    cached = DataLoaders.from_datasets(
        TeacherLogits(dls.train.dataset, teacher), dls.valid.dataset, bs=16, device='cpu'
    )
    x, y, logits = cached.train.dataset[5]
    with torch.no_grad():
        assert torch.allclose(logits, teacher(x[None])[0], atol=1e-6)
    weights = []
    for loaders, flag in ((dls, False), (cached, True)):
        torch.manual_seed(3)
        student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        torch.manual_seed(4)
        DistillationLearner(
            student, teacher, loaders, T=3, alpha=0.7, cached_logits=flag, quiet=True
        ).fit(2, lr=1e-2)
        weights.append(student[1].weight.detach())
    assert torch.allclose(*weights, atol=1e-5)


def test_teacher_logits_refuses_random_augmentation():
    x, y = torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    noisy = ArrayDataset(x, y, transform=lambda img: img + torch.rand_like(img))
    with pytest.raises(ValueError, match='augmentation'):
        TeacherLogits(noisy, cnn())


def test_count_size_latency():
    m = cnn()
    assert count_params(m) == sum(p.numel() for p in m.parameters())
    assert size_bytes(m) >= 4 * count_params(m)
    assert latency_ms(m, torch.zeros(2, 1, 8, 8), repeats=2, warmup=1) > 0
    with pytest.raises(ValueError):
        latency_ms(m, torch.zeros(2, 1, 8, 8), repeats=0)


@pytest.mark.parametrize('amount', [0.0, 0.3, 0.8])
def test_magnitude_prune_global_sparsity_and_copy(amount):
    m = cnn()
    p = magnitude_prune(m, amount)
    assert sparsity(m) == 0 and abs(sparsity(p) - amount) < 0.01
    kept = torch.cat([w.flatten().abs() for w in (p[0].weight, p[4].weight, p[6].weight)])
    orig = torch.cat([w.flatten().abs() for w in (m[0].weight, m[4].weight, m[6].weight)])
    if amount:
        assert kept[kept > 0].min() >= orig[kept == 0].max()  # the smallest magnitudes went
    assert count_params(p, nonzero=True) < count_params(m) or amount == 0


def test_prune_masks_survive_training_then_fold():
    dls = data()
    p = magnitude_prune(cnn(), 0.5, permanent=False)
    Learner(p, dls, nn.CrossEntropyLoss(), quiet=True).fit(1, lr=1e-2)
    assert abs(sparsity(p) - 0.5) < 0.01
    make_permanent(p)
    assert not hasattr(p[0], 'weight_orig') and abs(sparsity(p) - 0.5) < 0.01


def test_prune_bad_arguments():
    with pytest.raises(ValueError, match='amount'):
        magnitude_prune(cnn(), 1.0)
    with pytest.raises(ValueError, match='scope'):
        magnitude_prune(cnn(), 0.5, scope='row')
    with pytest.raises(ValueError, match='no Conv or Linear'):
        magnitude_prune(nn.ReLU(), 0.5)


def test_quantize_dynamic_and_static_agree_with_float():
    dls = data()
    m = cnn()
    Learner(m, dls, nn.CrossEntropyLoss(), quiet=True).fit(3, lr=1e-2)
    m.eval()
    x = next(iter(dls.test))[0]
    dyn, stat = quantize_dynamic_int8(m), quantize_static_int8(m, dls.train, n_batches=4)
    with torch.no_grad():
        ref = m(x)
        for q in (dyn, stat):
            out = q(x)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    assert size_bytes(stat) < size_bytes(m) / 1.8 and size_bytes(dyn) < size_bytes(m)
    assert any(p.requires_grad for p in m.parameters())  # the float model is untouched


def test_quantize_bad_input():
    dls = data()
    with pytest.raises(ValueError, match='no nn.Linear'):
        quantize_dynamic_int8(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match='at least one batch'):
        quantize_static_int8(cnn(), dls.train, n_batches=0)
    with pytest.raises(ValueError, match='no batches'):
        quantize_static_int8(cnn(), [], n_batches=2)
    with pytest.raises(ValueError, match='backend'):
        quantize_static_int8(cnn(), dls.train, backend='tpu')
    with pytest.raises(TypeError, match='float'):
        quantize_static_int8(cnn(), [torch.zeros(2, 1, 8, 8, dtype=torch.long)])

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(ValueError, match='traced'):
        quantize_static_int8(Branchy(), [torch.randn(2, 4)])
