"""Recommendation chapter: metric functions against hand-worked values and sklearn, bad input,
recommend(), the recipe and the CLI."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import ndcg_score

from bigmodel_book.recsys.data import (
    catalogue_coverage,
    encode_interactions,
    evaluate_sampled,
    hit_rate_at_k,
    leave_last_out,
    map_at_k,
    ndcg_at_k,
    recall_at_k,
    top_k_items,
    user_items,
)
from bigmodel_book.recsys.models import (
    BPRMF,
    GRU4Rec,
    NeuMF,
    RecsysConfig,
    Recommender,
    bpr_loss,
    sequence_windows,
    train_recsys,
)

TOP = np.array([[3, 5, 7], [1, 9, 2], [0, 1, 2]])
REL = [{3, 7}, {9}, {4}]


def test_metrics_hand_worked():
    ndcg_u = [1.5 / (1 + 1 / np.log2(3)), 1 / np.log2(3), 0.0]
    assert hit_rate_at_k(TOP, REL, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(TOP, REL, k=3) == pytest.approx(2 / 3)
    assert ndcg_at_k(TOP, REL, k=3) == pytest.approx(np.mean(ndcg_u))
    assert map_at_k(TOP, REL, k=3) == pytest.approx((5 / 6 + 1 / 2) / 3)
    assert hit_rate_at_k(TOP, REL, k=1) == pytest.approx(1 / 3)
    assert catalogue_coverage(TOP, n_items=10, k=3) == pytest.approx(0.7)
    # one relevant item at rank r: NDCG = 1/log2(r+1), MAP = 1/r
    top = np.arange(10)[None]
    for r in range(1, 11):
        assert ndcg_at_k(top, [[r - 1]]) == pytest.approx(1 / np.log2(r + 1))
        assert map_at_k(top, [[r - 1]]) == pytest.approx(1 / r)


@pytest.mark.parametrize('k', [1, 3, 5, 10, 40])
def test_ndcg_matches_sklearn(k):
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(60, 40))
    rel = (rng.random((60, 40)) < 0.1).astype(float)
    rel[rel.sum(1) == 0, 0] = 1
    top = np.argsort(-scores, axis=1)
    assert ndcg_at_k(top, [np.flatnonzero(r) for r in rel], k=k) == pytest.approx(
        ndcg_score(rel, scores, k=k)
    )


@pytest.mark.parametrize(
    'k, err',
    [(0, ValueError), (-1, ValueError), (4, ValueError), (2.0, TypeError), (True, TypeError)],
)
def test_metrics_bad_k(k, err):
    for f in (hit_rate_at_k, ndcg_at_k, recall_at_k, map_at_k):
        with pytest.raises(err):
            f(TOP, REL, k)


def test_metrics_bad_shapes_and_empty_relevant():
    with pytest.raises(ValueError, match='no relevant'):
        ndcg_at_k(TOP, [{3}, set(), {4}], 2)
    with pytest.raises(ValueError, match='users'):
        hit_rate_at_k(TOP, REL[:2], 2)
    with pytest.raises(ValueError, match='2-D'):
        recall_at_k(np.arange(3), REL, 2)


def test_top_k_excludes_seen_and_checks_k():
    s = torch.arange(6.0)[None].repeat(2, 1)
    assert top_k_items(s, 3, [np.array([5, 4]), np.array([], dtype=np.int64)]).tolist() == [
        [3, 2, 1],
        [5, 4, 3],
    ]
    with pytest.raises(ValueError, match='unseen'):
        top_k_items(s, 5, [np.array([5, 4]), np.array([0])])
    with pytest.raises(ValueError):
        top_k_items(s, 0)
    with pytest.raises(ValueError, match='catalogue'):
        top_k_items(s, 7)


def test_sampled_ties_count_against_target():
    const = lambda u: torch.zeros(len(u), 10)
    res = evaluate_sampled(
        const, np.arange(3), np.array([0, 1, 2]), np.tile(np.arange(3, 10), (3, 1)), k=5
    )
    assert res['hr@5'] == 0.0


@pytest.fixture(scope='module')
def small():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            'user_id': np.repeat([10, 20, 30, 40], 6),
            'movie_id': rng.integers(100, 112, 24),
            'rating': rng.integers(1, 6, 24),
            'timestamp': np.arange(24),
        }
    ).drop_duplicates(['user_id', 'movie_id'])
    return encode_interactions(df)


def test_ids_and_split(small):
    with pytest.raises(ValueError, match='Unknown user id'):
        small.user_index(99)
    with pytest.raises(ValueError, match='Unknown item id'):
        small.item_index([100, 5000])
    tr, va, te = leave_last_out(small)
    assert len(va) == len(te) == small.n_users
    assert (te.groupby('user').timestamp.max() >= tr.groupby('user').timestamp.max()).all()


def test_recommend_never_seen_and_cold_start(small):
    seen = user_items(small.ratings, small.n_users)
    model = BPRMF(small.n_users, small.n_items, 8)
    scorer = lambda u: model.score_all(torch.as_tensor(u)).detach()
    rec = Recommender(scorer, small, seen, np.bincount(small.ratings.item, minlength=small.n_items))
    for uid in small.user_ids:
        left = small.n_items - len(seen[small.user_index(uid)])
        out = rec.recommend(uid, k=left)
        assert len(out) == left and not set(out.movie_id) & set(
            small.item_ids[seen[small.user_index(uid)]]
        )
        with pytest.raises(ValueError, match='has not seen'):
            rec.recommend(uid, k=left + 1)
    with pytest.raises(ValueError):
        rec.recommend(10, k=0)
    assert (rec.recommend(12345, k=3).source == 'popular').all()
    with pytest.raises(ValueError, match='Unknown user'):
        rec.recommend(12345, k=3, cold_start='raise')
    empty = Recommender(
        scorer, small, [np.zeros(0, dtype=np.int64)] * small.n_users, np.ones(small.n_items)
    )
    assert (empty.recommend(10, 2).source == 'popular').all()


def test_models_bad_ids_and_shapes():
    for m in (BPRMF(4, 6, 8), NeuMF(4, 6, 4, 4, (8,))):
        assert m(torch.tensor([0, 3]), torch.randint(0, 6, (2, 5))).shape == (2, 5)
        assert m.score_all(torch.tensor([1, 2])).shape == (2, 6)
        with pytest.raises(ValueError, match='item indices'):
            m(torch.tensor([0]), torch.tensor([6]))
        with pytest.raises(TypeError):
            m(torch.tensor([0.0]), torch.tensor([1]))
    g = GRU4Rec(6, 8)
    assert g(torch.tensor([[0, 1, 2], [3, 4, 6]])).shape == (2, 3, 6)
    with pytest.raises(ValueError):
        g(torch.tensor([[7]]))
    with pytest.raises(ValueError, match='two or more'):
        sequence_windows([np.array([1]), np.array([], dtype=np.int64)])
    assert bpr_loss(torch.zeros(3), torch.zeros(3, 2)).item() == pytest.approx(np.log(2))


@pytest.mark.parametrize('model', ['mf', 'bpr'])
def test_recipe(tmp_path, model):
    _, res = train_recsys(
        RecsysConfig(model=model, epochs=1, out=tmp_path, quiet=True, device='cpu')
    )
    assert (tmp_path / 'model.safetensors').exists() and (tmp_path / 'metrics.json').exists()
    if model == 'mf':
        assert res['test_rmse'] < 1.2
    else:
        assert 0 <= res['test_full_hr@10'] <= res['test_sampled_hr@10'] <= 1


def test_recipe_defaults_per_model():
    cfgs = [RecsysConfig(model=m) for m in ('mf', 'bpr', 'neumf', 'seq')]
    assert [(c.epochs, c.lr, c.bs) for c in cfgs] == [
        (6, 1e-2, 1024),
        (10, 1e-2, 1024),
        (6, 3e-3, 1024),
        (6, 5e-3, 64),
    ]
    assert RecsysConfig(model='seq', bs=8).bs == 8
    with pytest.raises(ValueError, match='model must be one of'):
        RecsysConfig(model='svd')


def test_cli(tmp_path):
    from bigmodel_book.cli.commands import train_recsys_main

    res = train_recsys_main(
        ['--model', 'mf', '--epochs', '1', '--out', str(tmp_path), '--quiet', '--device', 'cpu']
    )
    assert (tmp_path / 'model.safetensors').exists() and res['test_rmse'] < 1.2


def test_cli_bad_model(tmp_path):
    from bigmodel_book.cli.commands import train_recsys_main

    with pytest.raises(SystemExit):
        train_recsys_main(['--model', 'svd', '--out', str(tmp_path)])


def test_leave_last_out_breaks_ties_at_random():
    # 300 users who rated three films in the same second: sorting ties by item id would always make
    # the highest id the test item; the seeded random order must carry no such signal
    df = pd.DataFrame(
        {
            'user_id': np.repeat(np.arange(300), 5),
            'movie_id': np.tile([1, 2, 3, 4, 5], 300),
            'rating': 3,
            'timestamp': np.tile([10, 20, 30, 30, 30], 300),
        }
    )
    data = encode_interactions(df)
    tr, va, te = leave_last_out(data)
    assert len(te) == len(va) == 300 and set(te.movie_id) | set(va.movie_id) <= {3, 4, 5}
    assert set(tr.movie_id) >= {1, 2} and (tr.groupby('user').size() == 3).all()
    share_max = (te.movie_id == 5).mean()
    assert 0.2 < share_max < 0.5, share_max  # about 1/3, not 1
    again = leave_last_out(data, seed=42)[2]
    assert te.movie_id.tolist() == again.movie_id.tolist()  # repeatable with the default seed
    other = leave_last_out(data, seed=7)[2]
    assert (other.movie_id.to_numpy() != te.movie_id.to_numpy()).any()
