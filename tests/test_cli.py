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


def test_help_imports_no_torch():
    "`bigmodel-book --help` and `train --help` answer without importing torch or any part."
    code = (
        "import contextlib, io, sys\n"
        "from bigmodel_book.cli.core import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help']); main(['train', '--help'])\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('bigmodel_book.')))"
    )
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['bigmodel_book.cli', 'bigmodel_book.cli.core']", r.stdout


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


def test_export_format_executorch(tmp_path):
    "`bigmodel-book export --format executorch` writes a verified model.pte that agrees with eager."
    import torch

    from bigmodel_book.lifecycle.edge import EdgeModel
    from bigmodel_book.lifecycle.export import load_model_dir
    from bigmodel_book.train.checkpoint import save_weights
    from bigmodel_book.vision.models import LeNet5

    torch.manual_seed(0)
    model = LeNet5(n_classes=10).eval()
    (tmp_path / 'run').mkdir()
    save_weights(model, tmp_path / 'run' / 'model.safetensors')
    out = tmp_path / 'lenet'
    args = ['export', '--checkpoint', str(tmp_path / 'run'), '--kwargs', '{"n_classes": 10}']
    args += ['--builder', 'bigmodel_book.vision.models:LeNet5', '--input-shape', '1', '28', '28']
    assert main([*args, '--format', 'executorch', '--out', str(out)]) == 0
    _, config = load_model_dir(out)  # the digests cover model.pte
    assert set(config['files']) == {'model.safetensors', 'model.pte'}
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        assert (EdgeModel(out / 'model.pte')(x) - model(x)).abs().max() < 1e-4


def test_export_without_builder_reads_the_run(tmp_path, capsys):
    "A `train vision` run leaves model.json, so export needs no --builder; without it, one line."
    run_dir = tmp_path / 'run'
    args = ['train', 'vision', '--model', 'lenet', '--epochs', '1', '--bs', '256', '--quiet']
    assert main([*args, '--device', 'cpu', '--out', str(run_dir)]) == 0
    saved = json.loads((run_dir / 'model.json').read_text())
    assert saved['builder'] == 'bigmodel_book.vision.models:LeNet5'
    out = tmp_path / 'exported'
    assert main(['export', '--checkpoint', str(run_dir), '--formats', '--out', str(out)]) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['builder'] == saved['builder'] and config['input_shape'] == [1, 28, 28]
    (run_dir / 'model.json').unlink()
    r = run('export', '--checkpoint', str(run_dir), '--out', str(tmp_path / 'again'))
    assert r.returncode == 1 and 'holds no model.json' in r.stderr and 'Traceback' not in r.stderr


def test_train_apps_runs_a_task_and_refuses_options_of_others(tmp_path, capsys):
    from bigmodel_book.cli.commands import train_apps_main

    args = ['--task', 'anomaly', '--epochs', '1', '--n-train', '500', '--device', 'cpu']
    m = train_apps_main([*args, '--out', str(tmp_path), '--quiet'])
    saved = json.loads((tmp_path / 'metrics.json').read_text())
    assert m == saved and saved['task'] == 'anomaly' and 0 < saved['test_ap'] <= 1
    assert (tmp_path / 'model.safetensors').exists()
    for bad, flag in ((['--task', 'demand', '--days', '20'], '--days'),
                      (['--task', 'traffic', '--n-train', '5'], '--n-train')):
        with pytest.raises(SystemExit) as e:
            train_apps_main(bad)
        assert e.value.code == 2 and f'{flag} does not apply' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_apps_main(['--epochs', '1'])  # --task is required
    assert '--task' in capsys.readouterr().err
