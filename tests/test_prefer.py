"""Preference tuning (6.8): the DPO loss on a case worked by hand, log 2 when the policy is the
reference, its gradient, clear errors for bad input, a DPO step that prefers the chosen response,
sampling, the KL estimate, distinct-n, and the command line's post-training runs loadable by
`generate`. Tiny models and a few hundred reviews: seconds."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from bigmodel_book.cli.core import main
from bigmodel_book.data.core import DataLoaders
from bigmodel_book.text.gpt import GPT
from bigmodel_book.text.instruct import pad_batch, sequence_logprob
from bigmodel_book.text.prefer import (
    DPOLearner,
    PreferenceDataset,
    best_of_n_kl,
    distinct_n,
    dpo_loss,
    pad_pairs,
    preference_pairs,
    response_example,
    response_kl,
    sample_ids,
    sample_responses,
)


def vec(*v):
    return torch.tensor(v, dtype=torch.float)


def test_dpo_loss_worked_by_hand():
    # pair 1: policy (-1, -2), reference (-1.5, -1.5): margin 0.5 * ((-1 + 1.5) - (-2 + 1.5)) = 0.5
    # pair 2: policy (-3, -1), reference (-2, -2): margin 0.5 * ((-3 + 2) - (-1 + 2)) = -1
    by_hand = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(1.0))) / 2
    loss = dpo_loss(vec(-1, -3), vec(-2, -1), vec(-1.5, -2), vec(-1.5, -2), beta=0.5)
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)


@pytest.mark.parametrize('beta', [0.01, 0.1, 5.0])
def test_dpo_loss_is_log_2_when_the_policy_is_the_reference(beta):
    chosen, rejected = torch.randn(6) * 10, torch.randn(6) * 10
    loss = dpo_loss(chosen, rejected, chosen.clone(), rejected.clone(), beta=beta)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_dpo_gradient_is_the_papers():
    lp = torch.randn(4, 5)
    pw, pl = lp[0].clone().requires_grad_(), lp[1].clone().requires_grad_()
    dpo_loss(pw, pl, lp[2], lp[3], beta=0.3).backward()
    z = 0.3 * ((lp[0] - lp[2]) - (lp[1] - lp[3]))
    weight = 0.3 * torch.sigmoid(-z) / 5
    assert torch.allclose(pw.grad, -weight, atol=1e-6)
    assert torch.allclose(pl.grad, weight, atol=1e-6)
    bce = F.binary_cross_entropy_with_logits(z, torch.ones(5))
    assert torch.allclose(dpo_loss(*lp, beta=0.3), bce, atol=1e-6)


@pytest.mark.parametrize(
    'args, kwargs, match',
    [
        ((vec(1, 2), vec(1, 2), vec(1), vec(1, 2)), {}, 'one shape'),
        ((torch.zeros(2, 2),) * 4, {}, 'one shape'),
        ((torch.zeros(0),) * 4, {}, 'one shape'),
        (([1.0], [1.0], [1.0], [1.0]), {}, 'one shape'),
        ((vec(1),) * 4, {'beta': 0}, 'beta'),
        ((vec(1),) * 4, {'beta': -0.1}, 'beta'),
        ((vec(1),) * 4, {'beta': float('nan')}, 'beta'),
        ((vec(1),) * 4, {'beta': float('inf')}, 'beta'),
        ((vec(1),) * 4, {'beta': True}, 'beta'),
        ((vec(1),) * 4, {'beta': '0.1'}, 'beta'),
    ],
)
def test_dpo_loss_refuses_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(*args, **kwargs)


def test_dpo_learner_prefers_the_chosen_and_keeps_the_reference(tok, gpt):
    import copy

    prompts = ['is it soft?', 'a dress?', 'fit?', 'lovely?']
    chosen = [tok.encode(' lovely soft') + [tok.end]] * 4
    rejected = [tok.encode(' small dress fit') + [tok.end]] * 4
    ref = copy.deepcopy(gpt)
    ds = PreferenceDataset(tok, prompts, chosen, rejected, ref)
    x, y = response_example(tok, prompts[0], chosen[0])
    assert ds.ref[0, 0].item() == pytest.approx(sequence_logprob(ref, x[None], y[None]).item())
    dls = DataLoaders.from_datasets(ds, ds, bs=4, collate_fn=pad_pairs, device='cpu')
    learn = DPOLearner(copy.deepcopy(ref), dls, beta=0.5, quiet=True)
    torch.manual_seed(0)
    learn.fit(8, lr=3e-2)
    assert learn.recorder.losses[0] == pytest.approx(math.log(2), abs=1e-5)
    res = learn.evaluate()
    assert res['loss'] < math.log(2) - 0.1 and res['preference_accuracy'] == 1.0
    for a, b in zip(ref.parameters(), gpt.parameters()):  # the reference did not move
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match='beta'):
        DPOLearner(ref, dls, beta=0.0)


def test_sampling_stops_fits_and_repeats(tok, gpt):
    ctx = [tok.chat('is it soft?')[0], tok.chat('fit?')[0]]
    a = sample_ids(gpt, ctx, n=3, max_new=10, stop=tok.end, seed=1)
    assert a == sample_ids(gpt, ctx, n=3, max_new=10, stop=tok.end, seed=1)
    for c, rs in zip(ctx, a):
        assert len(rs) == 3
        for r in rs:
            assert 1 <= len(r) <= min(10, gpt.block_size - len(c))
            assert tok.end not in r[:-1]
    assert len(sample_responses(gpt, tok, ['fit?'], n=2, max_new=5)[0]) == 2
    with pytest.raises(ValueError, match='no room'):
        sample_ids(gpt, [list(range(40))], 1)
    with pytest.raises(ValueError, match='n >= 1'):
        sample_ids(gpt, ctx, 0)


def test_response_kl_is_zero_for_the_reference_and_positive_otherwise(tok, gpt):
    X, Y = pad_batch([response_example(tok, 'fit?', tok.encode(' soft dress') + [tok.end])] * 2)
    assert torch.allclose(response_kl(gpt, gpt, X, Y), torch.zeros(2), atol=1e-6)
    torch.manual_seed(1)
    other = GPT(tok.vocab_size, block_size=32, d_model=16, n_heads=2, n_layers=2, dropout=0.0)
    assert (response_kl(other, gpt, X, Y) > 0).all()
    with pytest.raises(ValueError, match=r'\[B, T\]'):
        response_kl(gpt, gpt, X, Y[:, :-1])


def test_distinct_n_and_best_of_n_bound():
    # words a b a b a c: 3 distinct of 6; pairs (a b) (b a) (a b) (a c): 3 distinct of 4
    assert distinct_n(['a b a b', 'A c'], 1) == pytest.approx(0.5)
    assert distinct_n(['a b a b', 'A c'], 2) == pytest.approx(0.75)
    assert distinct_n([''], 2) == 0.0
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError):
        distinct_n(['a'], 0)


def test_preference_pairs_take_best_and_worst():
    import numpy as np
    import pandas as pd

    prompts = pd.DataFrame(dict(prompt=['p', 'q'], stars=[1, 5]))
    responses = [[[1], [2], [3]], [[4], [5], [6]]]
    scores = np.array([[0.1, 0.9, 0.5], [0.5, 0.55, 0.52]])
    pairs = preference_pairs(prompts, responses, scores, min_gap=0.1)
    assert len(pairs) == 1 and pairs.chosen[0] == [2] and pairs.rejected[0] == [1]
    with pytest.raises(ValueError, match='scores'):
        preference_pairs(prompts, responses, scores[:1])


TINY = ['--train-size', '300', '--vocab-size', '260', '--d-model', '16', '--n-layers', '1',
        '--n-heads', '2', '--block-size', '64', '--windows', '32', '--n-train', '32', '--quiet']


@pytest.mark.slow
@pytest.mark.parametrize('task, extra', [
    ('lora', ['--rank', '2']),
    ('dpo', ['--n-per-star', '2', '--samples', '2', '--min-gap', '0', '--epochs', '1']),
])
def test_cli_post_training_writes_a_model_generate_answers_with(tmp_path, capsys, task, extra):
    out = tmp_path / task
    assert main(['train', 'text', '--task', task, '--out', str(out), *TINY, *extra]) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['task'] == task
    assert json.loads((out / 'gpt_config.json').read_text())['tokenizer']['template'] == 'chat'
    capsys.readouterr()
    prompt = 'Write a 1-star review.'
    assert main(['generate', '--checkpoint', str(out), '--prompt', prompt, '--n', '6']) == 0
    reply = capsys.readouterr().out
    assert prompt not in reply and '<|user|>' not in reply
