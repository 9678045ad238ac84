"""Shared pytest set-up: quick scale, no progress bars, a private cache, GPU tests skipped
without CUDA."""

import os, tempfile

os.environ.setdefault('BMB_QUICK', '1')
os.environ.setdefault('BMB_PROGRESS', '0')
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('BMB_CACHE', tempfile.mkdtemp(prefix='bmb-test-cache-'))

import pytest, torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip)
