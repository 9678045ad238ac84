"""Side information and cold start (nbs/62): feature encoding, the two-tower model, group
popularity and the new-user fallbacks of SideRecommender."""

import numpy as np
import pandas as pd
import pytest
import torch

from bigmodel_book.data.external import load_movielens_100k
from bigmodel_book.recsys.data import encode_interactions, user_items
from bigmodel_book.recsys.side import (
    GroupPopularity,
    SideRecommender,
    TwoTower,
    TwoTowerLearner,
    encode_user_features,
    features_only_scorer,
    sampled_softmax_loss,
    side_info,
)

FORM = {'age': 30, 'gender': 'F', 'occupation': 'student'}


@pytest.fixture(scope='module')
def setup():
    ml = load_movielens_100k()
    data = encode_interactions(ml.ratings)
    side = side_info(ml, data)
    cold = np.arange(0, data.n_users, 10)
    train = data.ratings[~data.ratings.user.isin(cold)]
    seen = user_items(train, data.n_users)
    torch.manual_seed(0)
    model = TwoTower(data.n_users, data.n_items, side, dim=8, feat_dim=4, hidden=16)
    gp = GroupPopularity(train, side.user_feats, data.n_items)
    rec = SideRecommender(
        model, gp, data, side, seen, np.bincount(train.item, minlength=data.n_items)
    )
    return ml, data, side, cold, seen, model, gp, rec


def test_side_info_shapes(setup):
    ml, data, side, *_ = setup
    assert side.user_feats.shape == (data.n_users, 4) and side.user_feats.dtype == np.int64
    assert (side.user_feats.min(0) >= 0).all() and (
        side.user_feats.max(0) < np.array(side.vocab)
    ).all()
    assert side.item_genres.shape == (data.n_items, len(side.genres)) and side.item_year.shape == (
        data.n_items,
    )
    assert side.encode_user({**FORM, 'zip_code': 'K1A'})[0, 3] == 10 and side.encode_user(
        FORM
    ).shape == (1, 4)


@pytest.mark.parametrize(
    'bad, err',
    [
        ({'age': 30, 'gender': 'F'}, ValueError),
        ({**FORM, 'gender': 'X'}, ValueError),
        ({**FORM, 'age': 0}, ValueError),
        ({**FORM, 'age': 'old'}, ValueError),
        ({**FORM, 'occupation': 'astronaut'}, ValueError),
        ([30, 'F', 'student'], TypeError),
    ],
)
def test_bad_features(setup, bad, err):
    side = setup[2]
    with pytest.raises(err):
        side.encode_user(bad)


def test_encode_missing_column():
    with pytest.raises(ValueError, match='missing'):
        encode_user_features(pd.DataFrame({'age': [3]}), ['student'])


def test_two_tower_shapes_and_checks(setup):
    _, data, side, _, _, model, _, _ = setup
    model.eval()
    u = torch.tensor([0, 3, 7])
    items = torch.randint(0, data.n_items, (3, 5))
    assert model(u, items).shape == (3, 5) and model(u, items[:, 0]).shape == (3,)
    assert torch.allclose(
        model.score_all(u)[torch.arange(3)[:, None], items], model(u, items), atol=1e-5
    )
    assert torch.allclose(
        model.score_all(u, use_id=False), model.score_features(model.user_feats[u]), atol=1e-6
    )
    with pytest.raises(ValueError, match='item'):
        model(u, torch.tensor([0, 1, data.n_items]))
    with pytest.raises(ValueError, match='user'):
        model.score_all(torch.tensor([data.n_users]))
    with pytest.raises(TypeError):
        model.score_all(torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r'\[batch, 4\]'):
        model.score_features(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match='id_dropout'):
        TwoTower(data.n_users, data.n_items, side, id_dropout=1.0)
    with pytest.raises(ValueError, match='side information'):
        TwoTower(data.n_users + 1, data.n_items, side)


def test_id_dropout_only_in_training(setup):
    _, data, side, *_ = setup
    torch.manual_seed(0)
    m = TwoTower(data.n_users, data.n_items, side, dim=8, feat_dim=4, hidden=16, id_dropout=0.5)
    u = torch.arange(200)
    feats = m.feature_vectors(m.user_feats[u])
    m.train()
    dropped = torch.isclose(m.user_vectors(u), feats).all(1).float().mean().item()
    assert 0.3 < dropped < 0.7
    m.eval()
    assert not torch.isclose(m.user_vectors(u), feats).all(1).any()


def test_sampled_softmax_loss():
    assert sampled_softmax_loss(torch.zeros(3), torch.zeros(3, 7)).item() == pytest.approx(
        np.log(8)
    )
    assert sampled_softmax_loss(torch.full((2,), 50.0), torch.zeros(2, 4)).item() == pytest.approx(
        0, abs=1e-6
    )


def test_group_popularity(setup):
    _, data, side, _, _, _, gp, _ = setup
    assert torch.allclose(gp.table.sum(1), torch.ones(len(gp.table)), atol=1e-4)
    assert gp.score_all(torch.tensor([0, 1])).shape == (2, data.n_items)
    assert torch.equal(
        gp.score_all(torch.tensor([5])), gp.score_features(torch.as_tensor(side.user_feats[[5]]))
    )


def test_recommend_known_never_seen(setup):
    _, data, _, cold, seen, _, _, rec = setup
    warm = np.setdiff1d(np.arange(data.n_users), cold)
    for u in warm[:20]:
        uid = data.user_ids[u]
        out = rec.recommend(uid, k=15)
        assert len(out) == 15 and (out.source == 'model').all()
        assert not set(out.movie_id) & set(data.item_ids[seen[u]])
    left = data.n_items - len(seen[warm[0]])
    assert len(rec.recommend(data.user_ids[warm[0]], k=left)) == left
    with pytest.raises(ValueError, match='has not seen'):
        rec.recommend(data.user_ids[warm[0]], k=left + 1)
    with pytest.raises(ValueError, match='at least 1'):
        rec.recommend(data.user_ids[warm[0]], k=0)


def test_recommend_cold_start_paths(setup):
    ml, data, side, cold, _, _, _, rec = setup
    group = rec.recommend(features=FORM, k=10)
    tower = rec.recommend(features=FORM, k=10, fallback='tower')
    popular = rec.recommend(k=10, fallback='popular')
    assert [set(x.source) for x in (group, tower, popular)] == [{'group'}, {'tower'}, {'popular'}]
    excl = group.movie_id[:4].tolist()
    again = rec.recommend(features=FORM, k=10, seen=excl)
    assert (
        not set(again.movie_id) & set(excl)
        and again.movie_id.tolist()[:6] == group.movie_id.tolist()[4:]
    )
    # a registered user without history is served from the stored features
    uid = data.user_ids[cold[0]]
    stored = rec.recommend(uid, k=5)
    assert (stored.source == 'group').all()
    assert (
        stored.movie_id.tolist()
        == rec.recommend(
            k=5, features=ml.users.set_index('user_id').loc[uid].to_dict()
        ).movie_id.tolist()
    )
    # an unknown id with features is a new user; without features it is an error
    assert (rec.recommend(99999, k=3, features=FORM).source == 'group').all()
    with pytest.raises(ValueError, match='Unknown user id'):
        rec.recommend(99999, k=3)
    with pytest.raises(ValueError, match='needs features'):
        rec.recommend(k=3)
    with pytest.raises(ValueError, match='Unknown item'):
        rec.recommend(features=FORM, seen=[99999])
    with pytest.raises(ValueError, match='fallback'):
        rec.recommend(features=FORM, fallback='random')
    with pytest.raises(ValueError, match='catalogue|not seen'):
        rec.recommend(features=FORM, k=data.n_items + 1)


def test_features_only_scorer_and_learner_step(setup):
    _, data, side, cold, _, model, _, _ = setup
    sc = features_only_scorer(model)(cold[:4])
    assert sc.shape == (4, data.n_items) and torch.allclose(
        sc, model.eval().score_features(model.user_feats[torch.as_tensor(cold[:4])]).detach()
    )
    from bigmodel_book.recsys.models import pair_dls

    train = data.ratings[~data.ratings.user.isin(cold)].iloc[:2048]
    m = TwoTower(data.n_users, data.n_items, side, dim=8, feat_dim=4, hidden=16)
    learn = TwoTowerLearner(
        m, pair_dls(train, bs=512), sampled_softmax_loss, n_items=data.n_items, n_neg=4, quiet=True
    )
    learn.fit(1, lr=1e-2)
    assert np.isfinite(learn.recorder.history[-1]['train_loss'])
