"""Claims are assertions and noise is measured (issue 22): seed_summary, bootstrap_ci, claim,
claim_better and the interval and seeds of a results row."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from bigmodel_book.core import environ
from bigmodel_book.results import (
    bootstrap_ci,
    claim,
    claim_better,
    record_results,
    seed_summary,
)


def accuracy(pred, y):
    return float((pred == y).mean())


@pytest.mark.parametrize(
    'values', [[0.5, 0.7], [0.984, 0.987, 0.980, 0.992, 0.985], list(range(10))]
)
def test_seed_summary_is_the_t_interval(values):
    s = seed_summary(values)
    v = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert s['n'] == len(v) and s['mean'] == pytest.approx(v.mean())
    assert s['std'] == pytest.approx(v.std(ddof=1))
    assert s['interval'] == pytest.approx([lo, hi])
    lo90, hi90 = seed_summary(values, level=0.9)['interval']
    assert lo < lo90 < hi90 < hi


@pytest.mark.parametrize('bad', [[1.0], [], [0.5, float('nan')], [[0.1, 0.2], [0.3, 0.4]]])
def test_seed_summary_refuses_what_is_not_seeds(bad):
    with pytest.raises(ValueError, match='seed_summary needs'):
        seed_summary(bad)


def test_bootstrap_ci_covers_the_true_accuracy():
    "Test sets drawn from a model right with probability 0.9: the 95% interval covers 0.9 ~95%."
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(100):
        y = np.zeros(400, dtype=int)
        pred = (rng.random(400) > 0.9).astype(int)  # wrong with probability 0.1
        lo, hi = bootstrap_ci(accuracy, pred, y, n_boot=300, seed=trial)
        covered += lo <= 0.9 <= hi
    assert 88 <= covered <= 100, covered


def test_bootstrap_ci_width_matches_binomial():
    y = np.zeros(1000, dtype=int)
    pred = y.copy()
    pred[:20] = 1
    lo, hi = bootstrap_ci(accuracy, pred, y, n_boot=2000)
    assert lo < 0.98 < hi
    assert (hi - lo) / 2 == pytest.approx(1.96 * (0.98 * 0.02 / 1000) ** 0.5, abs=0.0015)


def test_bootstrap_ci_is_seeded_and_pairs_rows():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, y, (y + 1) % 3)
    a = bootstrap_ci(accuracy, pred, y, seed=5)
    assert a == bootstrap_ci(accuracy, pred, y, seed=5)
    x = rng.normal(size=200)  # a continuous metric: another seed gives another interval
    assert bootstrap_ci(np.mean, x, seed=5) != bootstrap_ci(np.mean, x, seed=6)
    # rows resampled together: a perfect model stays perfect in every resample
    assert bootstrap_ci(accuracy, y, y) == (1.0, 1.0)
    # lists and tensors work too
    t = bootstrap_ci(
        lambda p, t: float((p == t).float().mean()), torch.tensor(pred), torch.tensor(y), seed=5
    )
    assert t == pytest.approx(a)
    assert bootstrap_ci(accuracy, list(pred), list(y), seed=5) == a


def test_bootstrap_ci_refuses_unpaired_arrays():
    with pytest.raises(ValueError, match='one length'):
        bootstrap_ci(accuracy, np.zeros(10), np.zeros(11))
    with pytest.raises(ValueError, match='level'):
        bootstrap_ci(accuracy, np.zeros(10), np.zeros(10), level=1.5)


def test_claims_raise_at_standard_scale():
    with environ(BMB_QUICK=None, BMB_SCALE='standard'):
        assert claim('GRU beats RNN', True) is True
        with pytest.raises(AssertionError, match='LSTM beats RNN.*0.19.*0.235'):
            claim('LSTM beats RNN', False, value=0.19, baseline=0.235)
        with pytest.raises(AssertionError, match=r'augmentation helps .*difference \+0.002.*0.009'):
            claim_better('augmentation helps', 0.985, 0.983, margin=0.009)
        assert claim_better('lower bpc', 2.1, 3.1, margin=0.5, higher=False)
        with pytest.raises(AssertionError, match='lower bpc'):
            claim_better('lower bpc', 3.1, 2.1, margin=0.0, higher=False)
    with environ(BMB_QUICK=None, BMB_SCALE='full'), pytest.raises(AssertionError):
        claim_better('full scale too', 0.5, 0.6, margin=0.0)


def test_claims_only_report_at_quick_scale(capsys):
    with environ(BMB_QUICK='1'):
        assert claim('LSTM beats RNN', False, value=0.19, baseline=0.235) is False
        assert claim_better('augmentation helps', 0.985, 0.983, margin=0.009) is False
        assert claim_better('ResNet beats SVM', 0.983, 0.958, margin=0.02) is True
    out = capsys.readouterr().out
    assert 'not checked at quick scale' in out and 'LSTM beats RNN' in out
    assert 'claim holds: ResNet beats SVM' in out


def test_claim_better_refuses_a_negative_margin():
    with pytest.raises(ValueError, match='margin'):
        claim_better('x', 1.0, 0.5, margin=-0.1)


def row(**kw):
    return dict(task='t', model='m', metric='acc', value=0.9, **kw)


def test_record_results_stores_interval_and_seeds(tmp_path):
    with environ(BMB_CACHE=str(tmp_path), BMB_QUICK='1'):
        s = seed_summary([0.88, 0.9, 0.92])
        p = record_results(
            'claims',
            [row(interval=s['interval'], seeds=s['n']), dict(row(), model='b')],
            split='s',
            seed=0,
        )
    rows = json.loads(p.read_text())['rows']
    assert rows[0]['interval'] == pytest.approx(s['interval']) and rows[0]['seeds'] == 3
    assert 'interval' not in rows[1] and 'seeds' not in rows[1]


@pytest.mark.parametrize(
    'bad',
    [
        dict(interval=[0.91, 0.95]),  # does not contain the value
        dict(interval=[0.95, 0.85]),  # low > high
        dict(interval=[0.8, float('inf')]),
        dict(interval=[0.8]),
        dict(interval='0.8-0.95'),
        dict(seeds=0),
        dict(seeds=2.5),
        dict(seeds=True),
    ],
)
def test_record_results_refuses_bad_noise(tmp_path, bad):
    with environ(BMB_CACHE=str(tmp_path), BMB_QUICK='1'), pytest.raises(ValueError):
        record_results('claims', [row(**bad)], split='s', seed=0)
