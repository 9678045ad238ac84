"""Tests for bigmodel_book.lifecycle.tune (Optuna studies, pruning callback, resumable study
and CLI) and bigmodel_book.lifecycle.finetune (freezing, heads, splitters)."""

import json

import optuna
import pytest
import torch
from torch import nn

from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.lifecycle.finetune import (
    GradualUnfreezing,
    discriminative_splitter,
    freeze_to,
    layer_groups,
    replace_head,
    unfreeze,
)
from bigmodel_book.lifecycle.tune import (
    OptunaPruning,
    TuneConfig,
    create_study,
    plot_study,
    run_study,
    sqlite_storage,
    trials_frame,
)
from bigmodel_book.results import record_results
from bigmodel_book.train.learner import Learner, accuracy, mlp

optuna.logging.set_verbosity(optuna.logging.WARNING)


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def tiny_dls(n=64):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoaders.from_datasets(
        ArrayDataset(x, y), ArrayDataset(x[:16], y[:16]), bs=16, device='cpu'
    )


def test_sqlite_storage_and_bad_names(tmp_path):
    url = sqlite_storage(tmp_path / 'sub' / 'study.db')
    assert url.startswith('sqlite:///') and (tmp_path / 'sub').is_dir()
    with pytest.raises(ValueError, match='.db'):
        sqlite_storage(tmp_path / 'study.json')
    with pytest.raises(ValueError, match='direction'):
        create_study('x', direction='best')


def test_study_resumes_from_sqlite(tmp_path):
    storage = sqlite_storage(tmp_path / 'study.db')
    s1 = create_study('s', storage, seed=1)
    s1.optimize(lambda t: -((t.suggest_float('x', -2, 2) - 1) ** 2), n_trials=4)
    del s1
    s2 = create_study('s', storage, seed=1)
    assert len(s2.trials) == 4
    s2.optimize(lambda t: -((t.suggest_float('x', -2, 2) - 1) ** 2), n_trials=3)
    assert len(create_study('s', storage).trials) == 7


def test_pruning_callback_prunes_bad_trials_with_learner():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long()
    dls = DataLoaders.from_datasets(
        ArrayDataset(x, y), ArrayDataset(x[:64], y[:64]), bs=32, device='cpu'
    )
    study = create_study('p', seed=0, n_startup_trials=2, n_warmup_steps=0)

    def objective(trial):
        lr = 3e-2 if trial.number < 2 else trial.suggest_categorical('lr', [3e-2, 1e-7])
        torch.manual_seed(0)
        learn = Learner(
            mlp(8, 16, 2),
            dls,
            nn.CrossEntropyLoss(),
            metrics=[accuracy],
            lr=lr,
            cbs=[OptunaPruning(trial)],
            quiet=True,
        )
        learn.fit(3)
        return learn.recorder.history[-1]['accuracy']

    study.optimize(objective, n_trials=6)
    frame = trials_frame(study)
    assert set(frame.state) <= {'COMPLETE', 'PRUNED'}
    bad = [t for t in study.trials if t.params.get('lr') == 1e-7]
    assert bad and all(t.state == optuna.trial.TrialState.PRUNED for t in bad)
    assert frame.loc[0, 'epochs'] == 3


def test_pruning_callback_unknown_metric():
    study = create_study('m')
    learn = Learner(
        small_cnn(),
        tiny_dls(),
        nn.CrossEntropyLoss(),
        metrics=[accuracy],
        cbs=[OptunaPruning(study.ask(), 'f1')],
        quiet=True,
    )
    with pytest.raises(KeyError, match='f1'):
        learn.fit(1)


def test_plot_study_needs_complete_trial():
    import matplotlib

    matplotlib.use('Agg')
    study = create_study('empty')
    with pytest.raises(ValueError, match='no complete trial'):
        plot_study(study)
    study.optimize(lambda t: t.suggest_float('a', 0, 1) + t.suggest_float('b', 0, 1), n_trials=4)
    assert plot_study(study) is not None


def test_record_results_keeps_other_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv('BMB_CACHE', str(tmp_path))
    row = lambda task, v: dict(task=task, model='m', metric='acc', value=v)
    record_results('lc', [row('a', 0.1)], split='s', seed=0)
    record_results('lc', [row('b', 0.2)], split='s', seed=0)
    path = record_results('lc', [row('a', 0.3)], split='s', seed=0)
    rows = json.loads(path.read_text())['rows']
    assert sorted((r['task'], r['value']) for r in rows) == [('a', 0.3), ('b', 0.2)]
    with pytest.raises(ValueError, match='task'):
        record_results('lc', [dict(model='m', metric='acc', value=1.0)], split='s', seed=0)


def test_tune_study_resumes(tmp_path):
    cfg = lambda trials: TuneConfig(trials=trials, epochs=1, out=tmp_path, device='cpu')
    a = run_study(cfg(2))
    b = run_study(cfg(3))
    assert (a['resumed_from'], b['resumed_from'], b['trials']) == (0, 2, 3)
    assert json.loads((tmp_path / 'best.json').read_text())['trials'] == 3
    with pytest.raises(ValueError, match='at least 1'):
        run_study(TuneConfig(trials=0, out=tmp_path))


def test_tune_cli_resumes(tmp_path, capsys):
    from bigmodel_book.cli.core import main

    argv = ['tune', '--epochs', '1', '--out', str(tmp_path), '--device', 'cpu']
    assert main(argv + ['--trials', '2']) == 0
    assert main(argv + ['--trials', '3']) == 0
    best = json.loads((tmp_path / 'best.json').read_text())
    assert (best['resumed_from'], best['trials']) == (2, 3)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == best
    with pytest.raises(SystemExit):
        main(['tune', '--trials', '0', '--out', str(tmp_path)])


def test_layer_groups_join_norms_and_freeze():
    net = small_cnn()
    groups = layer_groups(net)
    assert [type(g[0]).__name__ for g in groups] == ['Conv2d', 'Linear', 'Linear'] and isinstance(
        groups[0][1], nn.BatchNorm2d
    )
    assert freeze_to(net, -1) == 16 * 10 + 10
    assert (
        not net[0].weight.requires_grad
        and not net[1].weight.requires_grad
        and net[6].weight.requires_grad
    )
    assert freeze_to(net, 0) == unfreeze(net) == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError, match='between'):
        freeze_to(net, 4)
    with pytest.raises(TypeError):
        layer_groups('not a model')
    with pytest.raises(ValueError, match='no parameters'):
        layer_groups(nn.ReLU())


def test_replace_head_nested_and_bad():
    net = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)))
    replace_head(net, 3)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3) and net[1][2].in_features == 8
    with pytest.raises(ValueError, match='no nn.Linear'):
        replace_head(nn.Sequential(nn.Conv2d(1, 1, 1)), 2)
    with pytest.raises(ValueError, match='positive'):
        replace_head(net, 0)


def test_discriminative_splitter_groups_and_learner_lrs():
    net = small_cnn()
    groups = discriminative_splitter(2.0)(net)
    assert [g['lr_mult'] for g in groups] == [0.25, 0.5, 1.0]
    assert sum(len(g['params']) for g in groups) == len(list(net.parameters()))
    learn = Learner(
        net,
        tiny_dls(),
        nn.CrossEntropyLoss(),
        splitter=discriminative_splitter(2.0),
        lr=1e-2,
        quiet=True,
    )
    learn.fit(1, sched='constant')
    assert [g['lr'] for g in learn.opt.param_groups] == pytest.approx([2.5e-3, 5e-3, 1e-2])
    with pytest.raises(ValueError, match='decay'):
        discriminative_splitter(0.5)


def test_gradual_unfreezing_trains_top_first():
    torch.manual_seed(0)
    net = small_cnn()
    first, last = net[0].weight.detach().clone(), net[6].weight.detach().clone()
    seen = []

    class Spy(GradualUnfreezing):
        def before_epoch(self):
            super().before_epoch()
            seen.append(self.trainable)

    learn = Learner(net, tiny_dls(), nn.CrossEntropyLoss(), cbs=[Spy(every=1)], quiet=True)
    learn.fit(1)
    assert torch.equal(net[0].weight, first) and not torch.equal(net[6].weight, last)
    learn.fit(3)
    assert seen[-1] == sum(p.numel() for p in net.parameters()) and seen[1] < seen[2] < seen[3]
    assert not torch.equal(net[0].weight, first) and all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError):
        GradualUnfreezing(every=0)


# Resuming a killed study. Measured with optuna 5.0: `TPESampler(seed)` and `RandomSampler(seed)`
# draw from one random stream that starts again with the process, so after a resume the first new
# trial repeated trial 0's point (run 2 trials, then 5: trial 2 == trial 0) and the rest differed
# from an uninterrupted study. `PositionSeededTPE` seeds each draw by (seed, position among the
# finished trials, parameter name), and TPE draws each parameter from the finished trials only;
# so given the same history a resumed study draws the same points in the same order, and the
# tests below compare the trials in order (parameters and values), not as sorted lists.
def _points(study):
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [(t.params, t.value) for t in done]


@pytest.fixture
def one_thread():
    "One CPU thread for torch (these tiny models train faster so on a shared machine)."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tune_resumed_in_steps_draws_like_one_session(tmp_path, one_thread):
    cfg = lambda out, trials: TuneConfig(trials=trials, epochs=1, out=out, device='cpu')
    run_study(cfg(tmp_path / 'one', 4))
    for n in (1, 2, 4):
        run_study(cfg(tmp_path / 'steps', n))
    load = lambda d: create_study('digits-mlp', sqlite_storage(tmp_path / d / 'study.db'))
    one, steps = _points(load('one')), _points(load('steps'))
    assert len(one) == 4 and steps == one
    assert len({json.dumps(p, sort_keys=True) for p, _ in one}) == 4  # no repeated point


def test_retry_interrupted_fails_and_requeues(tmp_path):
    from bigmodel_book.lifecycle.tune import retry_interrupted

    study = create_study('r', sqlite_storage(tmp_path / 'study.db'), seed=0, resumable=True)
    study.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=2)
    half = study.ask()
    half.suggest_float('x', 0, 1)
    study.ask()  # killed before it suggested anything
    again = create_study('r', sqlite_storage(tmp_path / 'study.db'), seed=0, resumable=True)
    assert retry_interrupted(again) == [2, 3]
    states = [t.state.name for t in again.trials]
    assert states == ['COMPLETE', 'COMPLETE', 'FAIL', 'FAIL', 'WAITING', 'WAITING']
    assert again.trials[4].params == half.params and again.trials[5].params == {}
    assert retry_interrupted(again) == []
    again.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=2)
    assert again.trials[4].params == half.params
    assert [t.state.name for t in again.trials[4:]] == ['COMPLETE', 'COMPLETE']


def test_tune_refuses_a_study_another_process_runs(tmp_path):
    fcntl = pytest.importorskip('fcntl')
    with open(tmp_path / 'study.lock', 'a') as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match='Another process is running the study'):
            run_study(TuneConfig(trials=1, epochs=1, out=tmp_path, device='cpu'))
    assert not (tmp_path / 'study.db').exists()


@pytest.mark.slow
def test_tune_killed_mid_trial_resumes_like_uninterrupted(tmp_path):
    """SIGKILL `bigmodel-book tune` during trial 2 (seen RUNNING in its SQLite storage), resume
    with the same command: 4 complete trials, none RUNNING, the points of an uninterrupted run."""
    import os, signal, subprocess, sys, time
    from pathlib import Path

    exe = str(Path(sys.executable).parent / 'bigmodel-book')
    argv = lambda out: [exe, 'tune', '--trials', '4', '--epochs', '1', '--device', 'cpu',
                        '--seed', '3', '--out', str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS='1')  # the same in all three runs; faster when shared
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    storage = optuna.storages.RDBStorage(sqlite_storage(tmp_path / 'killed' / 'study.db'))
    whole = subprocess.Popen(argv(tmp_path / 'whole'), **pipe)  # the uninterrupted reference
    victim = subprocess.Popen(argv(tmp_path / 'killed'), **pipe)
    deadline, running, study = time.monotonic() + 50, None, None
    while running is None and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # trial 2 of a quick study can take well under a second
        try:  # trial 2: after two complete ones; kill once it holds its three parameters
            study = study or optuna.load_study(study_name='digits-mlp', storage=storage)
        except KeyError:
            continue  # the study is not created yet
        running = next(
            (t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
             if t.number == 2 and len(t.params) == 3),
            None,
        )  # fmt: skip
    assert running is not None, victim.communicate()
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    left = study.get_trials()
    assert [t.state.name for t in left] == ['COMPLETE', 'COMPLETE', 'RUNNING']  # what the kill left

    resumed = subprocess.run(argv(tmp_path / 'killed'), timeout=120, **pipe)
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(120) == 0, whole.stderr.read()
    load = lambda d: optuna.load_study(
        study_name='digits-mlp', storage=sqlite_storage(tmp_path / d / 'study.db')
    )
    killed, ref = load('killed'), load('whole')
    states = [t.state.name for t in killed.trials]
    assert states.count('COMPLETE') == 4 and 'RUNNING' not in states and states.count('FAIL') == 1
    assert killed.trials[3].params == running.params  # the killed point, retried first
    assert _points(killed) == _points(ref)  # same points, same order, same values
    best = json.loads((tmp_path / 'killed' / 'best.json').read_text())
    assert (best['trials'], best['failed'], best['retried'], best['resumed_from']) == (4, 1, [2], 2)
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == best
    assert best['best_value'] == ref.best_value and best['best_params'] == ref.best_params
