"""Shared pytest set-up: quick scale, no progress bars, a private cache, GPU tests skipped
without CUDA, and the fresh virtual environment with the built wheel (`fresh_env`)."""

import os, subprocess, sys, sysconfig, tempfile, venv
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session')
def fresh_env(tmp_path_factory):
    """A new virtual environment with only the built wheel of this repository installed. It sees
    this environment's third-party packages (torch, the data carriers), but not the repository.
    Built once per test session: the wheel tests (test_layout) and the container test share it."""
    tmp = tmp_path_factory.mktemp('wheel')
    dist = tmp / 'dist'
    build = [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(dist), str(ROOT)]
    subprocess.run(build, check=True, timeout=300, capture_output=True)
    wheel = next(dist.glob('bigmodel_book-*.whl'))
    env_dir = tmp / 'env'
    venv.create(env_dir, with_pip=True)
    py = env_dir / 'bin' / 'python'
    # ensurepip's old setuptools would hide this environment's (torch needs a newer one)
    drop = [py, '-m', 'pip', 'uninstall', '-y', '-q', 'setuptools']
    subprocess.run(drop, check=False, timeout=120, capture_output=True)
    site = Path(sysconfig.get_paths()['purelib'])
    new_site = Path(
        subprocess.check_output(
            [py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])']
        )
        .decode()
        .strip()
    )
    (new_site / 'deps.pth').write_text(str(site) + '\n')
    install = [py, '-m', 'pip', 'install', '--no-deps', '-q', str(wheel)]
    subprocess.run(install, check=True, timeout=300, capture_output=True)
    empty = tmp / 'empty'
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return env_dir, empty, env, wheel


@pytest.fixture(scope='module')
def tok():
    "The small chat tokenizer of the instruction-tuning and preference tests (6.7, 6.8)."
    from bigmodel_book.text.instruct import ChatTokenizer
    from bigmodel_book.text.tokenize import BPETokenizer

    return ChatTokenizer(BPETokenizer.train(['a small soft dress, lovely fit. ' * 20], 270))


@pytest.fixture(scope='module')
def gpt(tok):
    "A small untrained GPT over `tok`, in eval mode (seeded)."
    from bigmodel_book.text.gpt import GPT

    torch.manual_seed(0)
    return GPT(tok.vocab_size, block_size=32, d_model=16, n_heads=2, n_layers=2, dropout=0.0).eval()
