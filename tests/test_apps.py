"""Applications (issue 19): no forecaster looks ahead, the metrics match hand-worked cases, and bad
input gets a clear error."""

import math, sys

import numpy as np
import pytest
import torch

from bigmodel_book.apps.finance import (
    apps_data_file,
    diebold_mariano,
    ewma_variance,
    garch_variance,
    historical_variance,
    kupiec_test,
    log_returns,
    qlike,
    qlike_loss,
    value_at_risk,
    variance_rmse,
    volatility_features,
    VolatilityGRU,
)


@pytest.fixture(scope='module')
def returns():
    rng = np.random.default_rng(0)
    return rng.standard_t(5, 1500)


def perturbed(y, k, seed=1):
    "The series with every value from index k on replaced by noise."
    z = y.copy()
    z[k:] = np.random.default_rng(seed).normal(0, 10, len(y) - k)
    return z


# --- no look-ahead: a value from index k on never changes anything at an origin <= k ------------


@pytest.mark.parametrize('k', [200, 700, 1499])
def test_volatility_features_ignore_the_future(returns, k):
    origins = np.arange(66, 1500)
    a = volatility_features(returns, origins, 66, 1.3)
    b = volatility_features(perturbed(returns, k), origins, 66, 1.3)
    past = origins <= k
    assert torch.equal(a[past], b[past])
    assert not torch.equal(a[~past], b[~past]) or not (~past).any()


@pytest.mark.parametrize(
    'forecaster',
    [
        lambda y, o: historical_variance(y, o),
        lambda y, o: ewma_variance(y, o),
        lambda y, o: garch_variance(y, 1000, o)[0],  # fitted on the first 1000 days only
    ],
    ids=['historical', 'ewma', 'garch'],
)
def test_baseline_forecasts_ignore_the_future(returns, forecaster):
    origins = np.arange(1000, 1500)
    k = 1200
    a, b = forecaster(returns, origins), forecaster(perturbed(returns, k), origins)
    past = origins <= k
    np.testing.assert_array_equal(a[past], b[past])
    assert not np.allclose(a[~past], b[~past])


def test_gru_forecast_ignores_the_future(returns):
    torch.manual_seed(0)
    model = VolatilityGRU(8)
    torch.nn.init.normal_(model.head.weight)  # a model whose forecast depends on the GRU
    origins = np.arange(66, 600)
    k = 400
    with torch.no_grad():
        a = model(volatility_features(returns, origins, 66, 1.0))
        b = model(volatility_features(perturbed(returns, k), origins, 66, 1.0))
    past = torch.as_tensor(origins <= k)
    assert torch.equal(a[past], b[past]) and not torch.allclose(a[~past], b[~past])


# --- metrics: hand-worked cases -----------------------------------------------------------------


def test_qlike_hand_cases():
    assert qlike([4.0], [4.0]) == pytest.approx(math.log(4) + 1)
    assert qlike([1.0, 2.0], [0.0, 2.0]) == pytest.approx((0 + 0) / 2 + (math.log(2) + 1) / 2)
    # minimised in expectation at the true variance; under-forecasts cost more than over-forecasts
    assert qlike([2.0], [4.0]) > qlike([8.0], [4.0]) > qlike([4.0], [4.0])
    assert variance_rmse([1.0, 3.0], [2.0, 2.0]) == 1.0


def test_qlike_loss_matches_numpy_qlike():
    lv, r = torch.randn(30, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    assert qlike_loss(lv, r).item() == pytest.approx(qlike(np.exp(lv.numpy()), r.numpy() ** 2))


def test_kupiec_hand_cases():
    v = np.zeros(100)
    v[0] = 1
    assert kupiec_test(v, 0.01) == dict(days=100, violations=1, rate=0.01, lr=0.0, p_value=1.0)
    v[:5] = 1
    lr = -2 * (95 * math.log(0.99) + 5 * math.log(0.01) - 95 * math.log(0.95) - 5 * math.log(0.05))
    out = kupiec_test(v, 0.01)
    assert out['lr'] == pytest.approx(lr) and out['p_value'] < 0.05
    assert kupiec_test(np.zeros(100), 0.01)['lr'] == pytest.approx(-200 * math.log(0.99))
    assert kupiec_test(np.ones(10, bool), 0.5)['violations'] == 10


def test_value_at_risk_is_the_normal_quantile():
    assert value_at_risk(np.array([4.0]), 0.05)[0] == pytest.approx(2 * 1.6448536, rel=1e-6)
    assert value_at_risk(np.array([1.0]), 0.01, mean=0.5)[0] == pytest.approx(2.3263479 - 0.5)


def test_diebold_mariano_sign_and_zero_lag_z():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 500), rng.normal(0.5, 1, 500)
    out = diebold_mariano(a, b, lags=0)
    d = a - b
    assert out['stat'] == pytest.approx(d.mean() / (d.std() / math.sqrt(len(d))))
    assert out['stat'] < 0 and out['p_value'] < 1e-6
    assert diebold_mariano(a, a + rng.normal(0, 1e-3, 500))['p_value'] > 1e-3


def test_log_returns_hand_case():
    import pandas as pd

    r = log_returns(pd.Series([100.0, 110.0, 99.0]))
    assert r.tolist() == pytest.approx([100 * math.log(1.1), 100 * math.log(0.9)])


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'call',
    [
        lambda: qlike([0.0], [1.0]),
        lambda: qlike([1.0], [-1.0]),
        lambda: qlike([1.0, 2.0], [1.0]),
        lambda: qlike([], []),
        lambda: variance_rmse([np.nan], [1.0]),
        lambda: kupiec_test(np.array([0, 2]), 0.01),
        lambda: kupiec_test(np.array([]), 0.01),
        lambda: kupiec_test(np.array([0, 1]), 1.5),
        lambda: value_at_risk(np.array([1.0]), 0.95),
        lambda: value_at_risk(np.array([-1.0]), 0.05),
        lambda: diebold_mariano(np.ones(5), np.ones(6)),
        lambda: diebold_mariano(np.ones(50), np.ones(50)),
        lambda: ewma_variance(np.ones(5), np.arange(1, 5), lam=1.0),
        lambda: volatility_features(np.ones(100), np.arange(10, 20), 5, 0.0),
        lambda: volatility_features(np.ones(100), np.arange(2, 20), 5, 1.0),
        lambda: VolatilityGRU(0),
        lambda: VolatilityGRU()(torch.randn(2, 10, 1)),
        lambda: VolatilityGRU()(torch.randn(2, 30)),
        lambda: qlike_loss(torch.zeros(3), torch.zeros(4)),
    ],
)
def test_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize('prices', [[1.0], [1.0, -2.0], [1.0, float('nan')]])
def test_log_returns_refuse_bad_prices(prices):
    import pandas as pd

    with pytest.raises(ValueError):
        log_returns(pd.Series(prices))


def test_missing_data_package_names_the_install_command():
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'bigmodel-book\[apps\]'"):
        apps_data_file('no_such_data_package_xyz', 'data.csv')
    with pytest.raises(FileNotFoundError, match=r'bigmodel-book\[apps\]'):
        apps_data_file('arch', 'data', 'no_such_file.csv.gz')


# --- energy demand ------------------------------------------------------------------------------

from bigmodel_book.apps.energy import (  # noqa: E402
    DemandMLP,
    PinballLoss,
    arima_fourier_forecasts,
    calendar_features,
    conformal_margin,
    demand_inputs,
    interval_coverage,
    load_taylor,
    mase,
    mase_scale,
    pinball,
    sorted_quantiles,
)


@pytest.fixture(scope='module')
def demand():
    return load_taylor()


def test_load_taylor_equals_pmdarima(demand):
    from pmdarima.datasets import load_taylor as pm_taylor

    np.testing.assert_array_equal(demand.to_numpy(), pm_taylor())
    assert demand.index[0].day_name() == 'Monday' and len(demand) == 4032


@pytest.mark.parametrize('k', [900, 2000])
def test_demand_inputs_ignore_the_future(demand, k):
    y = demand.to_numpy()
    origins = np.arange(672, 2500, 7)
    xa, ca = demand_inputs(y, demand.index, origins, 3e4, 5e3)
    xb, cb = demand_inputs(perturbed(y, k), demand.index, origins, 3e4, 5e3)
    past = torch.as_tensor(origins <= k)
    assert torch.equal(xa[past], xb[past]) and torch.equal(ca, cb)
    assert not torch.equal(xa[~past], xb[~past])


def test_demand_mlp_forecast_ignores_the_future(demand):
    torch.manual_seed(0)
    model = DemandMLP(hidden=16, dropout=0.0).eval()
    torch.nn.init.normal_(model.net[-1].weight, std=0.1)
    y = demand.to_numpy()
    origins, k = np.arange(672, 1500, 5), 1200
    with torch.no_grad():
        a = model(*demand_inputs(y, demand.index, origins, 3e4, 5e3))
        b = model(*demand_inputs(perturbed(y, k), demand.index, origins, 3e4, 5e3))
    past = torch.as_tensor(origins <= k)
    assert torch.equal(a[past], b[past]) and not torch.allclose(a[~past], b[~past])


def test_arima_fourier_forecasts_ignore_the_future(demand):
    y = demand.to_numpy()
    origins, k = np.array([3400, 3440, 3480, 3520]), 3460
    a, _ = arima_fourier_forecasts(y, 3360, origins)
    b, _ = arima_fourier_forecasts(np.r_[y[:k], y[k:] * 1.3], 3360, origins)
    past = origins <= k
    np.testing.assert_allclose(a[past], b[past], rtol=1e-10)
    assert not np.allclose(a[~past], b[~past])


def test_calendar_features_hand_case():
    import pandas as pd

    f = calendar_features(pd.DatetimeIndex(['2000-06-05 00:00', '2000-06-10 06:00']))
    assert f.shape == (2, 9)
    assert f[0, :2].tolist() == pytest.approx([0.0, 1.0]) and f[0, 2] == 1  # Monday midnight
    assert f[1, :2].tolist() == pytest.approx([1.0, 0.0], abs=1e-6) and f[1, 2 + 5] == 1  # Sat 6am


def test_mase_hand_cases():
    assert mase_scale(np.array([1.0, 2, 3, 5]), period=2) == 2.5
    assert mase(np.array([6.0, 7.0]), np.array([1.0, 2.0]), 2.5) == 2.0
    y = np.arange(20.0)
    # a forecast exactly as good as the in-sample seasonal naive forecast scores 1
    assert mase(y[5:] - 5, y[5:], mase_scale(y, period=5)) == 1.0


def test_pinball_hand_cases():
    assert pinball([10.0], [12.0], 0.9) == pytest.approx(1.8)
    assert pinball([10.0], [12.0], 0.1) == pytest.approx(0.2)
    assert pinball([12.0], [10.0], 0.9) == pytest.approx(0.2)
    assert pinball([3.0, 5.0], [4.0, 4.0], 0.5) == pytest.approx(0.5)  # half the absolute error
    pq, tq = torch.randn(3, 4, 5), torch.randn(3, 4)
    qs = (0.025, 0.1, 0.5, 0.9, 0.975)
    ref = np.mean([pinball(pq[..., i].numpy(), tq.numpy(), t) for i, t in enumerate(qs)])
    assert PinballLoss(qs)(pq, tq).item() == pytest.approx(ref, rel=1e-5)


def test_sorting_quantiles_never_increases_pinball():
    torch.manual_seed(0)
    q, t = torch.randn(64, 6, 5), torch.randn(64, 6)
    loss = PinballLoss()
    assert loss(sorted_quantiles(q), t) <= loss(q, t) + 1e-7


def test_coverage_and_conformal_hand_cases():
    assert interval_coverage([0, 0, 0], [1, 1, 1], [0.5, 2, 1]) == pytest.approx(2 / 3)
    lo, hi, t = np.zeros(10), np.ones(10), np.r_[np.linspace(0.1, 0.9, 9), 1.5]
    assert conformal_margin(lo, hi, t, 0.9) == 0.5
    rng = np.random.default_rng(0)
    cal, test = rng.normal(size=2000), rng.normal(size=2000)
    m = conformal_margin(np.zeros(2000), np.zeros(2000), cal, 0.8)
    assert abs(interval_coverage(np.full(2000, -m), np.full(2000, m), test) - 0.8) < 0.03


@pytest.mark.parametrize(
    'call',
    [
        lambda: mase(np.ones(3), np.ones(4), 1.0),
        lambda: mase(np.ones(3), np.ones(3), 0.0),
        lambda: mase_scale(np.ones(10), period=336),
        lambda: mase_scale(np.ones(10), period=2),
        lambda: pinball([1.0], [1.0], 0.0),
        lambda: pinball([1.0, 2.0], [1.0], 0.5),
        lambda: interval_coverage([2.0], [1.0], [1.5]),
        lambda: interval_coverage([0.0], [1.0, 2.0], [1.5]),
        lambda: conformal_margin([0.0], [1.0], [0.5], 1.0),
        lambda: PinballLoss((0.5, 1.2)),
        lambda: PinballLoss()(torch.zeros(2, 3, 4), torch.zeros(2, 3)),
        lambda: DemandMLP(horizon=0),
        lambda: DemandMLP()(torch.randn(2, 336, 1), torch.randn(2, 9)),
        lambda: DemandMLP()(torch.randn(2, 672, 1), torch.randn(3, 9)),
        lambda: demand_inputs(np.ones(1000), None, np.array([700]), 0.0, 0.0),
        lambda: arima_fourier_forecasts(np.ones(4000), 3000, np.array([2900])),
    ],
)
def test_energy_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()


# --- anomaly detection --------------------------------------------------------------------------

from bigmodel_book.apps.anomaly import (  # noqa: E402
    AutoEncoder,
    alarm_scores,
    best_f1_threshold,
    load_shuttle,
    reconstruction_scores,
    zscore_scores,
)


def test_load_shuttle_shape_and_labels():
    x, y = load_shuttle()
    assert x.shape == (49097, 9) and x.dtype == np.float32 and int(y.sum()) == 3511


def test_anomaly_scores_hand_cases():
    assert zscore_scores(np.array([[0.5, -3.0, 1.0], [0.0, 0.0, 0.1]])).tolist() == [3.0, 0.1]
    ident = torch.nn.Linear(3, 3)
    torch.nn.init.eye_(ident.weight)
    torch.nn.init.zeros_(ident.bias)
    assert np.allclose(reconstruction_scores(ident, np.random.randn(4, 3)), 0, atol=1e-6)
    zero = torch.nn.Linear(2, 2)
    torch.nn.init.zeros_(zero.weight)
    torch.nn.init.zeros_(zero.bias)
    assert reconstruction_scores(zero, np.array([[1.0, 3.0]])).tolist() == [5.0]  # (1 + 9) / 2


def test_threshold_and_alarms_hand_cases():
    assert best_f1_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 0.8
    out = alarm_scores(np.array([0.1, 0.9, 0.8]), np.array([0, 1, 0]), 0.5)
    assert out == dict(precision=0.5, recall=1.0, f1=pytest.approx(2 / 3))


@pytest.mark.parametrize(
    'call',
    [
        lambda: AutoEncoder(code=9),
        lambda: AutoEncoder(hidden=0),
        lambda: zscore_scores(np.ones(3)),
        lambda: reconstruction_scores(AutoEncoder(), np.ones(9)),
        lambda: best_f1_threshold(np.ones(3), np.zeros(3)),
        lambda: best_f1_threshold(np.ones(3), np.array([0, 2, 1])),
        lambda: alarm_scores(np.ones(3), np.ones(2), 0.5),
    ],
)
def test_anomaly_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()


# --- clustering (11.3) --------------------------------------------------------------------------

from bigmodel_book.apps.anomaly import cluster_scores, encode  # noqa: E402


def test_cluster_scores_find_separate_groups_whatever_their_names():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, (40, 3)) for c in (0, 4, -4)])
    y = np.repeat([0, 1, 2], 40)
    perfect = dict(nmi=[1.0, 1.0], ari=[1.0, 1.0])
    assert cluster_scores(x, x, y, 3, seeds=(0, 1)) == perfect
    assert cluster_scores(x, x, np.repeat([5, 2, 9], 40), 3, seeds=(0, 1)) == perfect
    fitted_elsewhere = cluster_scores(x[::2], x[1::2], y[1::2], 3, seeds=(0,))
    assert fitted_elsewhere['ari'] == [1.0]
    chance = cluster_scores(x, x, rng.permutation(y), 3, seeds=(0,))
    assert chance['nmi'][0] < 0.1 and abs(chance['ari'][0]) < 0.1
    merged = cluster_scores(x, x, y, 2, seeds=(0,))  # one cluster must hold two groups
    assert merged['nmi'][0] < 1 and merged['ari'][0] < 1


def test_encode_is_the_encoder_output():
    ae = AutoEncoder(n_in=4, hidden=5, code=2)
    x = np.random.default_rng(1).normal(size=(7, 4)).astype(np.float32)
    with torch.no_grad():
        expected = ae.encoder(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(encode(ae, x, bs=3), expected, rtol=1e-6)


@pytest.mark.parametrize(
    'call',
    [
        lambda: cluster_scores(np.ones((5, 2)), np.ones((5, 3)), np.zeros(5), 2),
        lambda: cluster_scores(np.ones((5, 2)), np.ones((5, 2)), np.zeros(4), 2),
        lambda: cluster_scores(np.ones((5, 2)), np.ones((5, 2)), np.zeros(5), 1),
        lambda: cluster_scores(np.ones((5, 2)), np.ones((5, 2)), np.zeros(5), 6),
        lambda: cluster_scores(np.ones((5, 2)), np.ones((5, 2)), np.zeros(5), 2, seeds=()),
        lambda: cluster_scores(np.ones(5), np.ones(5), np.zeros(5), 2),
        lambda: encode(AutoEncoder(), np.ones(9)),
    ],
)
def test_clustering_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_encode_refuses_a_model_without_encoder():
    with pytest.raises(TypeError, match='AutoEncoder'):
        encode(torch.nn.Linear(3, 3), np.ones((2, 3)))


# --- traffic (11.4) -----------------------------------------------------------------------------

from bigmodel_book.apps import traffic as tr  # noqa: E402


@pytest.fixture(scope='module')
def city():
    "Synthetic counts (days, links, bins) with a daily shape, a weekly pattern and noise."
    rng = np.random.default_rng(0)
    days, links = 21, 6
    shape = 100 + 80 * np.sin(np.linspace(0, np.pi, tr.BINS_PER_DAY))
    weekend = np.arange(days) % 7 >= 5
    level = np.where(weekend, 0.5, 1.0)[:, None, None] * rng.lognormal(0, 0.1, (days, 1, 1))
    noise = rng.normal(0, 5, (days, links, tr.BINS_PER_DAY))
    counts = level * shape * rng.uniform(0.5, 1.5, (1, links, 1)) + noise
    return np.maximum(counts, 0), weekend


def inputs(counts, weekend, origins, train=slice(0, 14)):
    ha = tr.historical_average(counts, weekend, train)
    mean, std = counts[train].mean((0, 2))[:, None], counts[train].std((0, 2))[:, None]
    return tr.traffic_windows(counts, ha, weekend, origins, mean, std, lags=4, horizon=4)


@pytest.mark.parametrize('k, t', [(15, 4), (17, 30), (20, 59)])
def test_traffic_windows_never_use_data_after_their_timestamp(city, k, t):
    counts, weekend = city
    origins = np.array([[k, t]])
    changed = counts.copy()
    changed[k, :, t:] = np.random.default_rng(1).uniform(0, 999, changed[k, :, t:].shape)
    changed[k + 1:] += 123.0
    a, b = inputs(counts, weekend, origins), inputs(changed, weekend, origins)
    assert all(torch.equal(x, y) for x, y in zip(a[:3], b[:3]))  # lags, HA, time: unchanged
    assert not torch.equal(a[3], b[3])  # the targets are the changed bins
    one_earlier = inputs(changed, weekend, np.array([[k, t + 1]]))  # ... which later origins see
    assert not torch.equal(a[0], one_earlier[0])


def test_traffic_model_forecast_never_uses_the_future(city):
    counts, weekend = city
    torch.manual_seed(0)
    model = tr.TrafficMLP(n_links=6, hidden=16, dropout=0.0).eval()
    torch.nn.init.normal_(model.net[-1].weight)  # a model whose output depends on its inputs
    origins = tr.traffic_origins([16], 4, 4)
    changed = counts.copy()
    changed[16, :, 40:] += 500.0
    with torch.no_grad():
        a = model(*inputs(counts, weekend, origins)[:3])
        b = model(*inputs(changed, weekend, origins)[:3])
    past = torch.as_tensor(origins[:, 1] <= 40)
    assert torch.equal(a[past], b[past]) and not torch.allclose(a[~past], b[~past])


def test_historical_average_uses_only_training_days_and_leaves_the_day_out(city):
    counts, weekend = city
    ha = tr.historical_average(counts, weekend, slice(0, 14))
    train_weekdays = [d for d in range(14) if not weekend[d]]
    np.testing.assert_allclose(ha[15], counts[train_weekdays].mean(0))  # a test weekday
    others = [d for d in train_weekdays if d != 2]
    np.testing.assert_allclose(ha[2], counts[others].mean(0))  # a training day: left out
    later = counts.copy()
    later[14:] = 0  # the test days never change the average
    np.testing.assert_allclose(tr.historical_average(later, weekend, slice(0, 14)), ha)


def test_baselines_and_origins_hand_cases(city):
    counts, weekend = city
    o = tr.traffic_origins([10, 11], lags=4, horizon=4)
    assert len(o) == 2 * (tr.BINS_PER_DAY - 7)
    assert o[0].tolist() == [10, 4] and o[-1].tolist() == [11, 60]
    fc = tr.baseline_forecasts(counts, counts, o, horizon=4)
    np.testing.assert_array_equal(fc['seasonal naive (a week ago)'][0, 2], counts[3, :, 6])
    np.testing.assert_array_equal(fc['last value'][0, 3], counts[10, :, 3])
    assert tr.mae_rmse([1.0, 3.0], [2.0, 2.0]) == (1.0, 1.0)
    assert tr.day_split(98) == (slice(0, 70), slice(70, 84), slice(84, 98))
    links = tr.grid_links(3)
    adj = tr.link_adjacency(links)
    assert len(links) == 24 and adj.shape == (24, 24) and np.trace(adj) == 0
    assert adj[links.index(('x0y0', 'x1y0')), links.index(('x1y0', 'x0y0'))] == 0  # no U-turns


def test_untrained_traffic_mlp_is_the_historical_average(city):
    counts, weekend = city
    past, ha, time, _ = inputs(counts, weekend, tr.traffic_origins([15], 4, 4))
    assert torch.equal(tr.TrafficMLP(n_links=6, hidden=8)(past, ha, time), ha)


def test_simulation_without_uxsim_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv('BMB_CACHE', str(tmp_path))  # nothing cached: it must simulate
    monkeypatch.setitem(sys.modules, 'uxsim', None)  # import uxsim now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'bigmodel-book\[apps\]'"):
        tr.simulate_traffic(2)


def test_simulated_day_counts_vehicles_and_is_seeded(monkeypatch, tmp_path):
    pytest.importorskip('uxsim')
    monkeypatch.setenv('BMB_CACHE', str(tmp_path))
    sc = tr.TrafficScenario(grid=2, background=0.0)
    od = {('x0y0', 'x1y1'): np.full(tr.BINS_PER_DAY, 0.05)}  # 45 vehicles every 15 minutes
    counts = tr.simulate_day(sc, od, seed=0)
    assert counts.shape == (8, tr.BINS_PER_DAY) and (counts % 5 == 0).all()
    first = [tr.grid_links(2).index(link) for link in (('x0y0', 'x1y0'), ('x0y0', 'x0y1'))]
    assert counts[first].sum() == pytest.approx(0.05 * 16 * 3600, abs=25)  # each leaves x0y0 once
    assert (tr.simulate_day(sc, od, seed=0) == counts).all()


@pytest.mark.parametrize(
    'call',
    [
        lambda: tr.grid_links(1),
        lambda: tr.traffic_origins([0], lags=0),
        lambda: tr.traffic_origins([0], lags=60, horizon=5),
        lambda: tr.day_split(10),
        lambda: tr.simulate_traffic(0),
        lambda: tr.historical_average(np.ones((4, 2, 8)), np.zeros(3, bool), slice(0, 2)),
        lambda: tr.historical_average(np.ones((4, 2, 8)), np.arange(4) % 2 == 1, slice(0, 2)),
        lambda: tr.gather_bins(np.ones((2, 2, 8)), np.array([[0, 2]]), -3, 2),
        lambda: tr.baseline_forecasts(np.ones((9, 2, 64)), np.ones((9, 2, 64)), np.array([[6, 9]])),
        lambda: tr.traffic_windows(np.ones((2, 2, 64)), np.ones((2, 2, 64)), np.zeros(2, bool),
                                   np.array([[0, 10]]), 0.0, np.zeros((2, 1))),
        lambda: tr.TrafficMLP(hidden=0),
        lambda: tr.TrafficMLP(n_links=3)(*(torch.zeros(1, 4, n) for n in (3, 2)), torch.ones(1, 3)),
        lambda: tr.mae_rmse([np.nan], [1.0]),
    ],
)
def test_traffic_bad_input_is_a_clear_value_error(call):
    with pytest.raises(ValueError):
        call()
