"""Checkpoints survive a kill at any instant, refuse what cannot be real, and belong to one run.

The kill tests run a real training process and stop it with SIGKILL (no exception, no clean-up):
once between every file operation of a save, and at a few random moments."""

import json, os, signal, stat, subprocess, sys, textwrap, time
from pathlib import Path

import pytest
import torch
from torch import nn

from bigmodel_book.core import set_seed
from bigmodel_book.data.external import digits_dls
from bigmodel_book.train.checkpoint import (
    Checkpoint,
    DigitsConfig,
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    train_digits,
)
from bigmodel_book.train.learner import CheckpointError, Learner, accuracy, mlp

EPOCHS = 3

# One driver process imports torch once and forks each run: a run counts the file operations of
# its saves and SIGKILLs itself at operation K (or after T seconds); a second run then resumes.
DRIVER = textwrap.dedent(
    """
    import json, os, shutil, signal, sys, tempfile, threading, time
    import torch
    torch.set_num_threads(1)
    from bigmodel_book.train import checkpoint as ck
    from bigmodel_book.train.checkpoint import DigitsConfig, train_digits
    root, plan = sys.argv[1], json.loads(sys.argv[2])
    count = [0, 0]  # operations so far, operation to die at
    def counted(fn):
        def wrapper(*a, **k):
            count[0] += 1
            if count[0] == count[1]:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return wrapper
    for mod, name in [(os, 'replace'), (os, 'chmod'), (os, 'close'), (shutil, 'rmtree'),
                      (tempfile, 'mkdtemp'), (ck, 'save_file'), (torch, 'save')]:
        setattr(mod, name, counted(getattr(mod, name)))
    def run(out, kill_at=0, kill_after=0.0):
        pid = os.fork()
        if pid == 0:
            count[1] = kill_at
            if kill_after:
                threading.Timer(kill_after, os.kill, (os.getpid(), signal.SIGKILL)).start()
            cfg = DigitsConfig(epochs=%d, out=out, quiet=True, device='cpu')
            learn, _ = train_digits(cfg)
            state = {k: v for k, v in learn.model.state_dict().items()}
            torch.save(state, os.path.join(out, 'final.pt'))
            with open(os.path.join(out, 'ops'), 'w') as f:
                f.write(str(count[0]))
            os._exit(0)
        return os.waitpid(pid, 0)[1]
    results = {}
    for name, kill_at, kill_after in plan:
        out = os.path.join(root, name)
        killed = run(out, kill_at, kill_after)
        resumed = run(out) if killed else 0
        results[name] = [killed, resumed]
    print(json.dumps(results))
    """
    % EPOCHS
)


def _drive(root: Path, plan: list) -> dict:
    cmd = [sys.executable, '-c', DRIVER, str(root), json.dumps(plan)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _final(out: Path) -> dict:
    return torch.load(out / 'final.pt', weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_at_every_file_operation_and_at_random_moments(tmp_path):
    started = time.perf_counter()
    assert _drive(tmp_path, [['reference', 0, 0.0]]) == {'reference': [0, 0]}
    seconds = time.perf_counter() - started
    reference = _final(tmp_path / 'reference')
    n_ops = int((tmp_path / 'reference' / 'ops').read_text())
    per_save = n_ops // EPOCHS
    assert per_save >= 8, n_ops  # weights, state, manifest, publish, clean-up
    # every operation of the second save, the first and last of the run, and moments in between
    points = sorted({1, n_ops, *range(per_save + 1, 2 * per_save + 1)})
    plan = [[f'op{k}', k, 0.0] for k in points]
    plan += [[f'at{i}', 0, seconds * f] for i, f in enumerate([0.2, 0.45, 0.7])]
    results = _drive(tmp_path, plan)
    killed = 0
    for name, (kill_status, resume_status) in results.items():
        out = tmp_path / name
        assert resume_status == 0, f'{name}: the resumed run failed'
        if not kill_status:  # a timer that fired after the run had finished
            continue
        killed += 1
        assert os.WIFSIGNALED(kill_status) and os.WTERMSIG(kill_status) == signal.SIGKILL, name
        assert _same(_final(out), reference), f'{name}: not bit-identical after the kill'
        left = [p.name for p in (out / 'checkpoint').iterdir()]
        assert len(left) == 1 and left[0].startswith('epoch-'), (name, left)
        assert not list(out.rglob('*.tmp')), name
    assert killed >= len(points), results


def _learner(cbs=(), seed=0):
    set_seed(seed)
    dls = digits_dls(device='cpu')
    return Learner(mlp(), dls, nn.CrossEntropyLoss(), metrics=[accuracy], cbs=cbs, quiet=True)


def _saved(tmp_path) -> Path:
    _learner([Checkpoint(tmp_path)]).fit(2)
    return find_checkpoint(tmp_path)


@pytest.mark.parametrize(
    'manifest, message',
    [
        ('[1, 2]', 'not a bigmodel-book checkpoint'),
        ('{"format": "bigmodel-book checkpoint v2", "epoch": 1}', 'lists no SHA-256'),
        ('{"format": "bigmodel-book checkpoint v2", "sha256": []}', 'lists no SHA-256'),
        ('"just a string"', 'not a bigmodel-book checkpoint'),
    ],
)
def test_malformed_manifest_is_a_checkpoint_error(tmp_path, manifest, message):
    folder = _saved(tmp_path)
    (folder / 'manifest.json').write_text(manifest)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_learner(), folder)


def test_checkpoint_path_that_is_a_file(tmp_path):
    f = tmp_path / 'file'
    f.write_text('x')
    with pytest.raises(CheckpointError, match='is a file'):
        _learner([Checkpoint(f)]).fit(1)


def _rehash(folder: Path, state: dict):
    from bigmodel_book.core import sha256sum

    torch.save(state, folder / 'state.pt')
    manifest = json.loads((folder / 'manifest.json').read_text())
    manifest['sha256']['state.pt'] = sha256sum(folder / 'state.pt')
    (folder / 'manifest.json').write_text(json.dumps(manifest))


def test_state_that_cannot_be_real_is_refused(tmp_path):
    folder = _saved(tmp_path)
    state = torch.load(folder / 'state.pt', weights_only=True)
    _rehash(folder, {**state, 'epoch': 1_000_000})
    with pytest.raises(CheckpointError, match='claims epoch 1000000'):
        _learner([Checkpoint(tmp_path)]).fit(3)
    _rehash(folder, {**state, 'train_iter': 10**9})
    with pytest.raises(CheckpointError, match='optimiser steps'):
        _learner([Checkpoint(tmp_path)]).fit(3)


@pytest.mark.parametrize(
    'change, name',
    [(dict(lr=0.1), 'lr'), (dict(seed=1), 'seed'), (dict(bs=32), 'bs'), (dict(epochs=1), 'epochs')],
)
def test_other_settings_do_not_resume_silently(tmp_path, change, name):
    base = dict(epochs=2, out=tmp_path, quiet=True, device='cpu')
    train_digits(DigitsConfig(**base))
    with pytest.raises(CheckpointError, match=rf"{name}: .*--fresh.*old settings"):
        train_digits(DigitsConfig(**{**base, **change}))
    _, m = train_digits(DigitsConfig(**{**base, **change, 'fresh': True}))  # the way out
    assert m['test_accuracy'] > 0


def test_more_epochs_train_on(tmp_path):
    base = dict(epochs=2, out=tmp_path, quiet=True, device='cpu')
    train_digits(DigitsConfig(**base))
    learn, _ = train_digits(DigitsConfig(**{**base, 'epochs': 3}))
    assert [r['epoch'] for r in learn.recorder.history] == [0, 1, 2]


def test_files_get_the_usual_mode(tmp_path):
    old = os.umask(0o022)
    try:
        folder = save_checkpoint(_learner().fit(1), tmp_path)
    finally:
        os.umask(old)
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
