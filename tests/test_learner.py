"The foundation's promises: exact resume, clear errors on bad input, and the pieces of a step."

import json

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel_book.core import get_device, set_seed
from bigmodel_book.data.core import ArrayDataset, DataLoaders, pad_collate, split_indices
from bigmodel_book.data.external import digits_dls
from bigmodel_book.train.callbacks import EarlyStopping, GradientAccumulation, MixedPrecision
from bigmodel_book.train.checkpoint import (
    Checkpoint,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    save_weights,
)
from bigmodel_book.train.learner import (
    Callback,
    CheckpointError,
    Learner,
    LossInputError,
    ModelInputError,
    NonFiniteLossError,
    accuracy,
    mlp,
)


class StopAfter(Callback):
    "Simulates a crash after `n` epochs, once the checkpoint of that epoch is written."

    order = 70

    def __init__(self, n):
        self.n = n

    def after_epoch(self):
        if self.learn.epoch + 1 == self.n:
            raise KeyboardInterrupt


def make_learner(cbs=(), seed=0, dropout=0.2, **kw):
    set_seed(seed)
    return Learner(
        mlp(dropout=dropout),
        digits_dls(device='cpu'),
        nn.CrossEntropyLoss(),
        metrics=[accuracy],
        cbs=list(cbs),
        quiet=True,
        **kw,
    )


def weights(learn):
    return [p.detach().clone() for p in learn.model.state_dict().values()]


@pytest.mark.parametrize('stop', [1, 3])
def test_resume_gives_identical_weights(tmp_path, stop):
    full = make_learner().fit(5)
    with pytest.raises(KeyboardInterrupt):
        make_learner([Checkpoint(tmp_path), StopAfter(stop)]).fit(5)
    manifest = json.loads((find_checkpoint(tmp_path) / 'manifest.json').read_text())
    assert manifest['epoch'] == stop - 1
    torch.manual_seed(1234)
    np.random.seed(7)  # state in between must not matter
    resumed = make_learner([Checkpoint(tmp_path)], seed=99).fit(5)
    assert all(torch.equal(a, b) for a, b in zip(weights(full), weights(resumed)))
    assert [r['valid_loss'] for r in full.recorder.history] == [
        r['valid_loss'] for r in resumed.recorder.history
    ]


def test_resume_with_bf16_and_accumulation(tmp_path):
    cbs = lambda: [MixedPrecision('bf16'), GradientAccumulation(2)]
    full = make_learner(cbs()).fit(3)
    with pytest.raises(KeyboardInterrupt):
        make_learner(cbs() + [Checkpoint(tmp_path), StopAfter(2)]).fit(3)
    resumed = make_learner(cbs() + [Checkpoint(tmp_path)]).fit(3)
    assert all(torch.equal(a, b) for a, b in zip(weights(full), weights(resumed)))


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match='empty'):
        ArrayDataset(torch.zeros(0, 4), torch.zeros(0))
    with pytest.raises(ValueError, match='empty'):
        split_indices(0)

    class Empty(torch.utils.data.Dataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError

    with pytest.raises(ValueError, match='train dataset is empty'):
        DataLoaders.from_datasets(Empty(), device='cpu')
    dl = torch.utils.data.DataLoader(Empty(), batch_size=4)
    learn = Learner(
        mlp(), DataLoaders(dl, dl, device=torch.device('cpu')), nn.CrossEntropyLoss(), quiet=True
    )
    with pytest.raises(ValueError, match='no batches'):
        learn.fit(1)
    with pytest.raises(ValueError, match='no batches'):
        learn.evaluate()


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(LossInputError, match=r'\(64, 10\).*\(64,\)'):
        Learner(mlp(), digits_dls(device='cpu'), nn.MSELoss(), quiet=True).fit(1)
    x, y = (
        torch.randn(32, 64),
        torch.randint(0, 3, (32, 2)),
    )  # 2-D class targets make cross-entropy fail
    dls = DataLoaders.from_datasets(ArrayDataset(x, y), bs=8, device='cpu')
    with pytest.raises(LossInputError, match=r'shape \(8, 10\).*shape \(8, 2\)'):
        Learner(mlp(), dls, nn.CrossEntropyLoss(), quiet=True).fit(1)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class PoisonAfter(Callback):
        "Puts a NaN into the inputs from epoch 2 on."

        def before_batch(self):
            if self.learn.epoch >= 2:
                self.learn.batch = (self.learn.batch[0] * float('nan'), self.learn.batch[1])

    learn = make_learner([Checkpoint(tmp_path), PoisonAfter()])
    with pytest.raises(NonFiniteLossError, match=r'epoch 2.*last good checkpoint is kept at'):
        learn.fit(5)
    assert json.loads((find_checkpoint(tmp_path) / 'manifest.json').read_text())['epoch'] == 1
    fresh = make_learner()
    assert load_checkpoint(fresh, tmp_path) == 1
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())


def _checkpoint(tmp_path):
    make_learner([Checkpoint(tmp_path)]).fit(1)
    return find_checkpoint(tmp_path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    data = (path / 'model.safetensors').read_bytes()
    (path / 'model.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='damaged'):
        load_checkpoint(make_learner(), path)
    with pytest.raises(CheckpointError, match='not a readable safetensors'):
        load_weights(mlp(), path / 'model.safetensors')


def test_foreign_checkpoint_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match='does not fit'):
        load_checkpoint(
            Learner(mlp(n_hidden=32), digits_dls(device='cpu'), nn.CrossEntropyLoss(), quiet=True),
            path,
        )
    (path / 'manifest.json').write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match='not a bigmodel-book checkpoint'):
        load_checkpoint(make_learner(), path)
    (path / 'manifest.json').write_text('not json')
    with pytest.raises(CheckpointError, match='not valid JSON'):
        load_checkpoint(make_learner(), path)
    torch.save({'x': 1}, tmp_path / 'pickle.pt')
    with pytest.raises(CheckpointError):
        load_weights(mlp(), tmp_path / 'pickle.pt')
    with pytest.raises(CheckpointError, match='missing'):
        load_checkpoint(make_learner(), tmp_path / 'nowhere')


@pytest.mark.parametrize('bad', ['gpu', 'tpu', 'cuda:x', 'cpu:banana', ''])
def test_wrong_device_string(bad):
    if bad == '':
        assert get_device(bad).type in ('cpu', 'cuda', 'mps')
        return
    with pytest.raises(ValueError, match="'auto'"):
        get_device(bad)


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    with pytest.raises(ValueError, match='CUDA is not available'):
        get_device('cuda')
    with pytest.raises(ValueError, match='CUDA is not available'):
        make_learner(device='cuda')


def test_early_stopping_restores_best(tmp_path):
    learn = make_learner([EarlyStopping(patience=2)], dropout=0.0)
    learn.fit(
        40, lr=0.5, sched='constant'
    )  # far too high: validation loss jumps around and worsens
    es = learn.early_stopping
    assert es.stopped_epoch is not None
    assert abs(learn.evaluate()['loss'] - es.best) < 1e-5


def test_predict_accepts_tensor_array_dataset():
    learn = make_learner().fit(1)
    x = learn.dls.test.dataset.arrays[0]
    a, b, c = learn.predict(x), learn.predict(x.numpy()), learn.predict(learn.dls.test.dataset)
    assert a.shape == (len(x), 10) and torch.allclose(a, b) and torch.allclose(a, c)
    with pytest.raises(ValueError):
        learn.predict(torch.zeros(0, 64))


def test_pad_collate_rejects_empty_sequences():
    with pytest.raises(ValueError, match='empty sequence'):
        pad_collate([(torch.tensor([1, 2]), 0), (torch.tensor([]), 1)])
    with pytest.raises(ValueError, match='empty batch'):
        pad_collate([])


def test_save_and_load_weights_roundtrip(tmp_path):
    m = mlp()
    save_weights(m, tmp_path / 'w.safetensors')
    m2 = load_weights(mlp(), tmp_path / 'w.safetensors')
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(FileNotFoundError):
        load_weights(mlp(), tmp_path / 'missing.safetensors')


def test_gradient_accumulation_matches_large_batch():
    def run(bs, cbs):
        set_seed(0)
        x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
        dl = torch.utils.data.DataLoader(ArrayDataset(x, y), batch_size=bs, shuffle=False)
        learn = Learner(
            mlp(),
            DataLoaders(dl, device=torch.device('cpu')),
            nn.CrossEntropyLoss(),
            opt_fn=torch.optim.SGD,
            cbs=cbs,
            wd=0,
            quiet=True,
        )
        learn.fit(1, lr=0.1, sched='constant')
        return torch.cat([p.flatten() for p in learn.model.parameters()])

    assert torch.allclose(run(64, []), run(16, [GradientAccumulation(4)]), atol=1e-6)


@pytest.mark.gpu
def test_cuda_amp_training_and_resume(tmp_path):
    def run(cbs):
        set_seed(0)
        return Learner(
            mlp(),
            digits_dls(device='cuda'),
            nn.CrossEntropyLoss(),
            metrics=[accuracy],
            cbs=cbs,
            quiet=True,
        )

    learn = run([MixedPrecision('fp16')]).fit(5, lr=1e-2)
    assert (
        next(learn.model.parameters()).is_cuda and learn.evaluate(learn.dls.test)['accuracy'] > 0.9
    )
    with pytest.raises(KeyboardInterrupt):
        run([MixedPrecision('fp16'), Checkpoint(tmp_path), StopAfter(2)]).fit(3)
    resumed = run([MixedPrecision('fp16'), Checkpoint(tmp_path)]).fit(3)
    assert resumed.epoch == 2 and resumed.scaler is not None


def test_predict_converts_arrays_and_lists():
    learn = make_learner()
    x = np.random.default_rng(0).random((5, 64))  # float64
    out = learn.predict(x)
    assert out.shape == (5, 10) and out.dtype == torch.float32
    assert torch.allclose(learn.predict(x.tolist()), out)
    with pytest.raises(ModelInputError, match='nested list of numbers'):
        learn.predict([[1.0, 2.0], ['a', None]])


def test_wrong_inputs_name_what_the_model_expects():
    learn = make_learner()
    with pytest.raises(ModelInputError, match=r'shape \(3, 65\).*64 features'):
        learn.predict(torch.zeros(3, 65))
    x, y = torch.randn(32, 63), torch.randint(0, 10, (32,))
    bad = DataLoaders.from_datasets(ArrayDataset(x, y), ArrayDataset(x, y), bs=8, device='cpu')
    with pytest.raises(ModelInputError, match='64 features'):
        Learner(mlp(), bad, nn.CrossEntropyLoss(), quiet=True).fit(1)
    with pytest.raises(ModelInputError, match='64 features'):
        learn.evaluate(bad.valid)


def test_unknown_schedule_lists_the_schedules():
    with pytest.raises(ValueError, match=r"'linear'.*cosine.*one_cycle"):
        make_learner().fit(1, sched='linear')
