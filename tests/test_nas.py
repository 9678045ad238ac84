"""Architecture search (chapter 8.10): the search space decodes to working networks, the Pareto
front and hypervolume helpers are right on hand-worked cases and against Optuna, pruning follows
rule (5), the budget counts trained networks, and the notebook opens its test split once."""

import json, re
from pathlib import Path

import numpy as np
import pytest
import torch

optuna = pytest.importorskip('optuna')

from bigmodel_book.data.core import ArrayDataset, DataLoaders
from bigmodel_book.lifecycle.nas import (
    SPACE, ArchSpec, DominancePruning, SearchCNN, SearchConfig, SealedSplit, all_archs,
    arch_from_params, cpu_latency_ms, hypervolume_2d, n_params, pareto_front, pick_arch,
    search, seal_test, suggest_arch,
)
from bigmodel_book.vision.models import ResNet

ROOT = Path(__file__).resolve().parents[1]


def params_of(spec: ArchSpec) -> dict:
    "The trial parameters that encode `spec`."
    kernels = {f'kernel{i}': k for i, k in enumerate(spec.kernels)}
    return dict(width=spec.width, stages=len(spec.kernels), blocks=spec.blocks,
                residual=spec.residual, **kernels)


def test_every_point_of_the_space_decodes_to_a_working_network():
    archs = all_archs()
    assert len(archs) == len(set(archs)) == 3 * (2 + 4 + 8) * 2 * 2
    x = torch.rand(2, 1, 28, 28)
    for i, spec in enumerate(archs):
        assert arch_from_params(params_of(spec)) == spec
        net = SearchCNN(spec).eval()
        if i % 3 == 0 or i == len(archs) - 1:  # a third of them run (every kind of choice)
            with torch.no_grad():
                assert net(x).shape == (2, 10), spec.name
        blocks = sum(1 for m in net.modules() if type(m).__name__ == 'SearchBlock')
        assert blocks == len(spec.kernels) * spec.blocks
    wider = [n_params(SearchCNN(ArchSpec(w, (3, 5), 2, True))) for w in SPACE['width']]
    assert wider == sorted(wider) and len(set(wider)) == 3


def test_suggest_arch_asks_kernels_only_for_existing_stages():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        spec = suggest_arch(trial)
        assert {k for k in trial.params if k.startswith('kernel')} == {
            f'kernel{i}' for i in range(len(spec.kernels))
        }
        study.tell(trial, 0.0)
    fixed = optuna.trial.FixedTrial(params_of(ArchSpec(8, (5,), 2, False)))
    assert suggest_arch(fixed) == ArchSpec(8, (5,), 2, False)


def test_the_resnet_of_2_2_is_a_point_of_the_space():
    resnet, ours = ResNet(width=16).eval(), SearchCNN(ArchSpec(16, (3, 3, 3), 1, True)).eval()
    ours.load_state_dict(resnet.state_dict())
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(ours(x), resnet(x))
    assert SearchCNN(ArchSpec(4, (3,), 1, False)).spec.name == 'w4-k3-b1-plain'


def test_pareto_front_hand_case():
    pts = [(1, 5), (2, 3), (3, 4), (4, 1), (2, 3), (5, 5), (4, 2)]
    # (3, 4) falls to (2, 3); (5, 5) to everything; (4, 2) to (4, 1); the two (2, 3) tie
    assert pareto_front(pts) == [0, 1, 3, 4]
    assert pareto_front([(0, 0)]) == [0]
    assert pareto_front([(1, 2, 3), (1, 2, 4), (0, 5, 5)]) == [0, 2]  # three objectives


def test_hypervolume_hand_case_and_against_optuna():
    from optuna._hypervolume import compute_hypervolume

    pts = [(1, 5), (2, 3), (3, 4), (4, 1)]
    # rectangles: [1, 2] x [5, 6], [2, 4] x [3, 6], [4, 6] x [1, 6] -> 1 + 6 + 10
    assert hypervolume_2d(pts, (6, 6)) == 17
    assert hypervolume_2d(pts + [(2, 3)], (6, 6)) == 17  # a duplicate adds nothing
    assert hypervolume_2d(pts, (3, 6)) == 1 + 1 * 3  # the box cuts the front
    assert hypervolume_2d([(7, 7)], (6, 6)) == 0
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, ref = rng.random((25, 2)), np.array([1.0, 1.5])
        inside = p[(p < ref).all(1)]
        theirs = compute_hypervolume(inside[pareto_front(inside)], ref)
        assert hypervolume_2d(p, ref) == pytest.approx(theirs, abs=1e-12)


@pytest.mark.parametrize(
    'call, match',
    [
        (lambda: arch_from_params(dict(width=12, stages=1, kernel0=3, blocks=1, residual=True)),
         'width=12'),
        (lambda: arch_from_params(dict(width=8, stages=2, kernel0=3, blocks=1, residual=True)),
         'kernel0..kernel1'),
        (lambda: arch_from_params(dict(width=8)), 'lack'),
        (lambda: ArchSpec(8, (4,)).check(), 'odd'),
        (lambda: ArchSpec(0, (3,)).check(), 'width >= 1'),
        (lambda: pareto_front([[0.1, float('nan')]]), 'finite'),
        (lambda: pareto_front([1, 2, 3]), r'\(n, d\)'),
        (lambda: hypervolume_2d([(1, 2)], (3,)), 'reference'),
    ],
)
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def tiny_dls(n: int = 64) -> DataLoaders:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    ds = ArrayDataset(x, y)
    return DataLoaders.from_datasets(ds, ds, ds, bs=32, device='cpu')


def test_test_split_opens_once():
    dls, sealed = seal_test(tiny_dls())
    assert dls.test is None and not sealed.opened
    assert sealed.open() is not None and sealed.opened
    with pytest.raises(RuntimeError, match='opened once already'):
        sealed.open()
    with pytest.raises(ValueError, match='no test loader'):
        seal_test(dls)
    once = SealedSplit([1, 2])
    assert once.open() == [1, 2]


def test_notebook_opens_the_test_split_in_one_cell():
    nb = json.loads((ROOT / 'nbs' / '79_lifecycle.nas.ipynb').read_text())
    code = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code']
    opening = [i for i, src in enumerate(code) if 'sealed.open(' in src]
    assert len(opening) == 1, 'exactly one cell may open the sealed test split'
    assert 'test_acc = final_test(final, sealed)' in code[opening[0]]
    sealing = [i for i, src in enumerate(code) if 'seal_test(full)' in src]
    assert len(sealing) == 1 and sealing[0] < opening[0]
    touching = [i for i, src in enumerate(code) if re.search(r'\b(full|dls)\.test\b', src)
                and not src.startswith('#| export')]  # seal_test itself is library code
    assert not touching, f'cells {touching} reach the test loader outside the seal'
    search_cell = next(i for i, src in enumerate(code) if 'search(sampler' in src)
    assert search_cell < opening[0], 'the test split is opened after the search, not before'


def fake_learner(n_epochs: int, acc: float):
    class Recorder:
        history = [{'accuracy': acc}]

    class Learn:
        recorder = Recorder()

    Learn.n_epochs = n_epochs
    return Learn()


def test_dominance_pruning_follows_rule_5():
    study = optuna.create_study(directions=['maximize', 'minimize'])
    study.add_trial(optuna.trial.create_trial(
        values=[0.95, 100], params={}, distributions={},
        user_attrs=dict(params=100, curve=[0.9, 0.95])))

    def pruned(params, acc, n_epochs=2):
        cb = DominancePruning(study.ask(), params, margin=0.02)
        cb.learn = fake_learner(n_epochs, acc)
        try:
            cb.after_epoch()
        except optuna.TrialPruned:
            return True
        return False

    assert pruned(100, 0.85)  # as large, clearly behind
    assert not pruned(100, 0.89)  # within the margin
    assert not pruned(99, 0.1)  # smaller: nothing smaller is ahead
    assert not pruned(500, 0.1, n_epochs=1)  # the last epoch is never cut short


def test_pick_arch_takes_the_most_accurate_within_the_budget():
    study = optuna.create_study(directions=['maximize', 'minimize'])
    dist = {k: optuna.distributions.CategoricalDistribution(SPACE[k])
            for k in ('width', 'stages', 'blocks', 'residual')}
    dist['kernel0'] = optuna.distributions.CategoricalDistribution(SPACE['kernel'])
    for width, acc, size in ((4, 0.80, 500), (8, 0.90, 2_000), (16, 0.95, 9_000)):
        params = params_of(ArchSpec(width, (3,), 1, True))
        study.add_trial(optuna.trial.create_trial(values=[acc, size], params=params,
                                                  distributions=dist))
    assert pick_arch(study, 5_000).width == 8
    assert pick_arch(study, 100_000).width == 16
    assert pick_arch(study, 10).width == 4  # nothing fits: the smallest on the front
    with pytest.raises(ValueError, match='no complete trial'):
        pick_arch(optuna.create_study(directions=['maximize', 'minimize']), 10)


def test_search_trains_each_network_once_and_counts_only_trained_ones():
    space = dict(width=(4,), stages=(1,), kernel=(3, 5), blocks=(1,), residual=(True,))
    dls = tiny_dls()
    x, y = (torch.cat(t) for t in zip(*dls.valid))
    cfg = SearchConfig(n_trials=5, epochs=1)
    study = search(optuna.samplers.RandomSampler(seed=0), dls, cfg, (x, y), 'tiny', space)
    trained = [t for t in study.trials if 'seconds' in t.user_attrs]
    assert len(trained) == 2  # the space holds two networks: the rest are repeats
    assert {t.user_attrs['arch'] for t in trained} == {'w4-k3-b1-res', 'w4-k5-b1-res'}
    for t in study.trials:
        if 'repeat_of' in t.user_attrs:
            assert t.values == study.trials[t.user_attrs['repeat_of']].values
    assert all(set(t.user_attrs['seconds']) >= {'sample', 'latency', 'train'} for t in trained)
    assert all(len(t.user_attrs['correct']) == len(y) for t in trained)
    with pytest.raises(ValueError, match='at least 1'):
        search(optuna.samplers.RandomSampler(), dls, SearchConfig(n_trials=0), (x, y))


def test_cpu_latency_is_positive_and_keeps_the_thread_setting():
    threads = torch.get_num_threads()
    ms = cpu_latency_ms(SearchCNN(ArchSpec(4, (3,), 1, True)), (1, 28, 28), repeats=3, warmup=1)
    assert ms > 0 and torch.get_num_threads() == threads
