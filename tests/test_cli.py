"""The command line: help at every level, a real training run through the console script, resume,
clear errors."""

import json, subprocess, sys
from pathlib import Path

import pytest

from bigmodel_book.cli.core import COMMANDS, TRAIN_TASKS, main

EXE = str(Path(sys.executable).parent / 'bigmodel-book')


def run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands_and_tasks(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert 'train' in out and all(c in out for c in COMMANDS)
    assert main(['train', '--help']) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in TRAIN_TASKS)


@pytest.mark.parametrize('task', sorted(TRAIN_TASKS))
def test_every_task_explains_its_options(task):
    r = run('train', task, '--help')
    assert r.returncode == 0, r.stderr
    assert '--epochs' in r.stdout and '--device' in r.stdout


def test_train_digits_then_resume(tmp_path):
    r = run('train', 'digits', '--epochs', '2', '--out', str(tmp_path), '--quiet')
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / 'metrics.json').read_text())
    assert metrics['test_accuracy'] > 0.5 and (tmp_path / 'model.safetensors').exists()
    r = run('train', 'digits', '--epochs', '3', '--out', str(tmp_path))
    assert r.returncode == 0 and 'resumed' in r.stdout and 'after epoch 2' in r.stdout


def test_bad_input_gives_one_line_errors(tmp_path):
    r = run('train', 'digits', '--device', 'tpu', '--out', str(tmp_path))
    assert r.returncode == 1 and 'Traceback' not in r.stderr and "'tpu'" in r.stderr
    r = run('train', 'nosuchtask')
    assert r.returncode == 2 and 'unknown task' in r.stderr
    r = run('frobnicate')
    assert r.returncode == 2 and 'unknown command' in r.stderr
    r = run('train', 'digits', '--epochs', 'many')
    assert r.returncode == 2 and 'invalid int value' in r.stderr
    (tmp_path / 'checkpoint').mkdir()
    (tmp_path / 'checkpoint' / 'manifest.json').write_text('garbage')
    r = run('train', 'digits', '--epochs', '1', '--out', str(tmp_path))
    assert r.returncode == 1 and 'not valid JSON' in r.stderr


def test_info_runs():
    r = run('info')
    assert r.returncode == 0 and 'torch' in r.stdout and 'device' in r.stdout


def test_out_that_is_a_file_is_one_line(tmp_path):
    f = tmp_path / 'taken'
    f.write_text('x')
    r = run('train', 'digits', '--epochs', '1', '--out', str(f), '--quiet')
    assert r.returncode == 1 and 'Traceback' not in r.stderr and 'is a file' in r.stderr


def test_errors_under_torchrun_come_once_from_rank_zero(tmp_path):
    import os

    args = [EXE, 'train', 'digits', '--device', 'tpu', '--out', str(tmp_path)]
    ranks = {}
    for rank in ('0', '1'):
        env = {**os.environ, 'RANK': rank}
        ranks[rank] = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert ranks['0'].returncode == ranks['1'].returncode == 1
    assert "'tpu'" in ranks['0'].stderr and ranks['1'].stderr.strip() == ''
