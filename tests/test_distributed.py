"""Distributed: 2 CPU processes (torchrun, gloo, through `bigmodel-book train distributed`) end with
identical weights that match one-process training on the same global batch; resume works."""

import json

import pytest, torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from bigmodel_book.data.core import DataLoaders
from bigmodel_book.lifecycle.distributed import (
    DistributedConfig,
    ShardSampler,
    launch,
    shard_dataloaders,
    train_distributed,
)

# max abs weight difference DDP vs one process
# (float32 rounding of the all-reduce, amplified a little by AdamW)
TOL = 1e-4
COMMON = [
    '--epochs',
    '3',
    '--bs',
    '64',
    '--lr',
    '1e-2',
    '--seed',
    '42',
    '--device',
    'cpu',
    '--quiet',
    '--hidden',
    '32',
]


def _max_diff(a, b):
    wa, wb = load_file(str(a / 'model.safetensors')), load_file(str(b / 'model.safetensors'))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('ddp')
    torch.set_num_threads(1)
    _, single = train_distributed(
        DistributedConfig(
            epochs=3,
            bs=64,
            lr=1e-2,
            seed=42,
            device='cpu',
            quiet=True,
            hidden=32,
            out=root / 'single',
        )
    )
    launch(COMMON + ['--out', str(root / 'ddp')], nproc=2)
    launch(COMMON + ['--out', str(root / 'resumed'), '--stop-after', '1'], nproc=2)
    first = json.loads((root / 'resumed' / 'metrics.json').read_text())
    launch(COMMON + ['--out', str(root / 'resumed')], nproc=2)
    return root, single, first


def test_both_ranks_identical_and_match_single_process(runs):
    root, single, _ = runs
    m = json.loads((root / 'ddp' / 'metrics.json').read_text())
    assert m['world_size'] == 2 and m['backend'] == 'gloo' and single['world_size'] == 1
    assert m['rank_weight_spread'] == 0.0  # all_gather of both ranks' final weights
    assert _max_diff(root / 'ddp', root / 'single') < TOL
    for a, b in zip(
        m['history'], single['history']
    ):  # metrics averaged over ranks = one-process metrics
        assert (
            abs(a['valid_loss'] - b['valid_loss']) < 1e-4
            and abs(a['train_loss'] - b['train_loss']) < 1e-4
        )


def test_only_rank_zero_writes(runs):
    root, _, _ = runs
    files = sorted(p.name for p in (root / 'ddp').iterdir())
    assert files == ['checkpoint', 'metrics.json', 'model.safetensors']
    ckpt = root / 'ddp' / 'checkpoint'  # one published folder: the last epoch (0-based 2 of 3)
    assert sorted(p.name for p in ckpt.iterdir()) == ['epoch-000002']
    assert sorted(p.name for p in (ckpt / 'epoch-000002').iterdir()) == [
        'manifest.json',
        'model.safetensors',
        'state.pt',
    ]


def test_resume_matches_uninterrupted(runs):
    root, _, first = runs
    assert first['epochs_run'] == 1
    resumed = json.loads((root / 'resumed' / 'metrics.json').read_text())
    assert resumed['epochs_run'] == 3 and resumed['rank_weight_spread'] == 0.0
    assert _max_diff(root / 'resumed', root / 'ddp') < TOL


def test_sharding_covers_the_global_batch():
    ds = TensorDataset(torch.arange(48.0), torch.arange(48))
    dls = DataLoaders(DataLoader(ds, batch_size=12), DataLoader(ds, batch_size=10))
    one = [b[1].tolist() for b in shard_dataloaders(dls, 0, 1, seed=3).train]
    ranks = [[b[1].tolist() for b in shard_dataloaders(dls, r, 3, seed=3).train] for r in range(3)]
    for k, batch in enumerate(one):
        assert sorted(batch) == sorted(sum((ranks[r][k] for r in range(3)), []))
    assert sorted(i for r in range(3) for i in ShardSampler(48, r, 3)) == list(range(48))
    with pytest.raises(ValueError, match='divisible'):
        shard_dataloaders(dls, 0, 5)
    with pytest.raises(ValueError, match='rank'):
        ShardSampler(10, 3, 3)


def test_batch_larger_than_data(tmp_path):
    with pytest.raises(ValueError, match='smaller than one global batch'):
        train_distributed(DistributedConfig(bs=4096, epochs=1, quiet=True, out=tmp_path))


@pytest.mark.gpu
def test_nccl_on_cuda(tmp_path):
    n = torch.cuda.device_count()
    launch(
        [
            '--epochs',
            '2',
            '--bs',
            str(64 * n),
            '--device',
            'cuda',
            '--quiet',
            '--out',
            str(tmp_path / 'nccl'),
        ],
        nproc=n,
    )
    m = json.loads((tmp_path / 'nccl' / 'metrics.json').read_text())
    assert (
        m['device'].startswith('cuda')
        and m['rank_weight_spread'] == 0.0
        and m['backend'] == ('nccl' if n > 1 else 'none')
    )
