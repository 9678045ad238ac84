"""Tests of bigmodel_book.sequence.*: from-scratch cells against torch.nn, masking, bad input,
the char LM, forecasting, seq2seq, the recipes and the CLI."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from bigmodel_book.data.core import lengths_mask, masked_mean
from bigmodel_book.sequence.cells import (
    GRUCell,
    LSTMCell,
    Recurrent,
    RNNCell,
    check_sequence_batch,
    copy_from_torch,
)
from bigmodel_book.sequence.charlm import (
    CharLMConfig,
    CharRNN,
    CharTokenizer,
    lm_loss,
    lm_windows,
    nats_to_bits,
    ngram_bpc,
    ngram_sample,
    real_word_hits,
    sample_next,
    speaker_lines,
    text_words,
    train_charlm,
)
from bigmodel_book.sequence.forecast import (
    ForecastConfig,
    Forecaster,
    forecast_errors,
    forecast_origins,
    make_windows,
    persistence_forecast,
    seasonal_naive_forecast,
    train_forecaster,
)
from bigmodel_book.sequence.seq2seq import (
    DatePairs,
    Seq2Seq,
    Seq2SeqConfig,
    Seq2SeqLearner,
    TGT_ITOS,
    beam_decode,
    date_pairs,
    decode_target,
    exact_match,
    greedy_decode,
    seq2seq_collate,
    train_seq2seq,
)

TORCH = {'rnn': nn.RNN, 'gru': nn.GRU, 'lstm': nn.LSTM}


def _states(s, mode):
    return s if mode == 'lstm' else (s,)


@pytest.mark.parametrize('mode', ['rnn', 'gru', 'lstm'])
@pytest.mark.parametrize(
    'layers,bidir,batch_first',
    [(1, False, False), (2, True, True), (3, False, True), (2, True, False)],
)
def test_layers_match_torch(mode, layers, bidir, batch_first):
    torch.manual_seed(0)
    ref = TORCH[mode](5, 7, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    ours = copy_from_torch(
        Recurrent(mode, 5, 7, num_layers=layers, bidirectional=bidir, batch_first=batch_first), ref
    )
    x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
    D = 2 if bidir else 1
    h0 = torch.randn(layers * D, 3, 7)
    hx = (h0, torch.randn_like(h0)) if mode == 'lstm' else h0
    for args in ((x,), (x, hx)):
        (o1, s1), (o2, s2) = ours(*args), ref(*args)
        assert torch.allclose(o1, o2, atol=1e-5)
        for a, b in zip(_states(s1, mode), _states(s2, mode)):
            assert torch.allclose(a, b, atol=1e-5)


def test_relu_rnn_and_gradients_match():
    torch.manual_seed(0)
    ref = nn.RNN(4, 6, 2, nonlinearity='relu', batch_first=True)
    ours = copy_from_torch(Recurrent('rnn', 4, 6, 2, nonlinearity='relu', batch_first=True), ref)
    x = torch.randn(2, 5, 4)
    assert torch.allclose(ours(x)[0], ref(x)[0], atol=1e-5)
    ref2 = nn.LSTM(4, 6, 2, batch_first=True)
    ours2 = copy_from_torch(Recurrent('lstm', 4, 6, 2, batch_first=True), ref2)
    ours2(x)[0].sum().backward()
    ref2(x)[0].sum().backward()
    assert torch.allclose(ours2.cells[0].weight_hh.grad, ref2.weight_hh_l0.grad, atol=1e-5)


@pytest.mark.parametrize(
    'ours_cls,ref_cls', [(RNNCell, nn.RNNCell), (GRUCell, nn.GRUCell), (LSTMCell, nn.LSTMCell)]
)
def test_cells_match_torch(ours_cls, ref_cls):
    torch.manual_seed(0)
    ours, ref = ours_cls(3, 4), ref_cls(3, 4)
    ours.load_state_dict(ref.state_dict())
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    if ours_cls is LSTMCell:
        for a, b in zip(ours(x, (h, c)), ref(x, (h, c))):
            assert torch.allclose(a, b, atol=1e-6)
    else:
        assert torch.allclose(ours(x, h), ref(x, h), atol=1e-6)


@pytest.mark.parametrize('bf', [1.0, 0.0, -2.0])
def test_lstm_forget_bias_sets_the_initial_forget_gate(bf):
    "b_f = forget_bias in the f block (equation 5): sigma(1) = 0.73; Recurrent passes it on."
    H = 6
    for cell in (LSTMCell(3, H, forget_bias=bf), Recurrent('lstm', 3, H, forget_bias=bf).cells[0]):
        b = cell.bias_ih.detach() + cell.bias_hh.detach()
        assert torch.allclose(b[H : 2 * H], torch.full((H,), bf))
        assert not torch.allclose(b[:H], torch.full((H,), bf))  # other gates keep their init
    assert abs(torch.sigmoid(torch.tensor(LSTMCell(3, H).bias_ih[H].item())) - 0.731) < 1e-3


@pytest.mark.parametrize('mode', ['gru', 'lstm'])
def test_masked_equals_packed(mode):
    torch.manual_seed(0)
    lengths = torch.tensor([4, 1, 6, 3])
    x = torch.randn(4, 6, 3)
    ref = TORCH[mode](3, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours = copy_from_torch(
        Recurrent(mode, 3, 5, num_layers=2, bidirectional=True, batch_first=True), ref
    )
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_p, s_p = ref(packed)
    out_p, _ = nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=6)
    out_m, s_m = ours(x, lengths=lengths)
    assert torch.allclose(out_m, out_p, atol=1e-5)
    for a, b in zip(_states(s_m, mode), _states(s_p, mode)):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(masked_mean(x, lengths_mask(lengths, 6))[1], x[1, :1].mean(0))


@pytest.mark.parametrize(
    'x,lengths,msg',
    [
        (torch.randn(5, 3), None, '3-D'),
        (torch.randn(1, 2, 5, 3), None, '3-D'),
        (torch.randn(2, 0, 3), None, 'empty'),
        (torch.randn(0, 4, 3), None, 'empty'),
        (torch.randn(2, 4, 3), [4, 3, 1], 'one entry per sequence'),
        (torch.randn(2, 4, 3), [4, 0], '1..4'),
        (torch.randn(2, 4, 3), [5, 1], '1..4'),
        (torch.randn(2, 4, 9), None, 'features'),
    ],
)
def test_bad_sequence_input(x, lengths, msg):
    layer = Recurrent('lstm', 3, 4, batch_first=True)
    with pytest.raises(ValueError, match=msg):
        layer(x, lengths=lengths)


def test_check_sequence_batch_type():
    with pytest.raises(TypeError):
        check_sequence_batch([[1.0]])


def test_char_tokenizer_policy():
    v = CharTokenizer.from_text('hello world')
    assert len(v) == len(set('hello world')) + 1 == v.vocab_size
    assert v.decode(v.encode('low')) == 'low'
    ids = v.encode('hex', unknown='unk')
    assert ids[-1] == 0 and v.decode(ids) == 'he\ufffd' and v.n_unknown == 1
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode('hex')
    assert v.decode(v.encode('hex', unknown='skip')) == 'he'
    with pytest.raises(ValueError):
        v.decode([0, 99])
    with pytest.raises(TypeError):
        v.encode(3)
    with pytest.raises(ValueError):
        CharTokenizer.from_text('')
    # ids: 0 = <unk>, then the sorted characters (3.3's and 6.1's rule); to_dict round trip
    assert v.itos[1:] == sorted(set('hello world')) and v.decode(torch.tensor([[1, 2]])) == ' d'
    w = CharTokenizer.from_dict(v.to_dict())
    assert w.itos == v.itos and w.encode('world') == v.encode('world')


def test_sample_next_and_units():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    assert sample_next(logits, temperature=0).flatten().tolist() == [2, 0]
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(50)], 1)
    assert set(draws[0].tolist()) <= {2, 3} and draws.shape == (2, 50)
    with pytest.raises(ValueError):
        sample_next(logits, temperature=-1)
    with pytest.raises(ValueError):
        sample_next(logits, top_k=0)
    assert abs(nats_to_bits(np.log(2)) - 1.0) < 1e-12


def test_char_rnn_sample_uses_sample_next():
    torch.manual_seed(0)
    m = CharRNN(7, 8, 16)
    prompt = torch.randint(0, 7, (2, 3))
    out = m.sample(prompt, 6, temperature=0.8, top_k=3, generator=torch.Generator().manual_seed(5))
    g, ref = torch.Generator().manual_seed(5), []  # the same draws, step by step
    with torch.no_grad():
        logits, state = m.eval().step(prompt)
        for _ in range(6):
            nxt = sample_next(logits[:, -1], 0.8, 3, g)
            ref.append(nxt)
            logits, state = m.step(nxt, state)
    assert torch.equal(out, torch.cat(ref, 1))


def test_char_rnn_shapes_generation_and_bad_input():
    v = CharTokenizer.from_text('abcdefg \n')
    for cell in ('rnn', 'gru', 'lstm'):
        for impl in ('torch', 'ours'):
            m = CharRNN(len(v), 8, 16, 2, cell=cell, impl=impl)
            assert m(torch.randint(0, len(v), (3, 5))).shape == (3, 5, len(v))
    m = CharRNN(len(v), 8, 16)
    assert m.generate(v, 'ab', 20, seed=3) == m.generate(v, 'ab', 20, seed=3)
    assert len(m.generate(v, 'ab', 20, temperature=0)) == 22
    with pytest.raises(ValueError, match='not in the vocabulary'):
        m.generate(v, 'abz', 5)
    assert m.generate(v, 'abz', 5, strict=False, seed=0).startswith('abz')
    with pytest.raises(ValueError):
        m.generate(v, '', 5)
    with pytest.raises(ValueError):
        m.generate(v, 'ab', 5, temperature=-1)
    with pytest.raises(ValueError, match='2-D'):
        m(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='empty'):
        m(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(TypeError):
        m(torch.zeros(2, 3))
    with pytest.raises(ValueError, match='lie in'):
        m(torch.full((1, 2), len(v)))


def test_lm_helpers():
    ids = torch.arange(11) % 5
    ds = lm_windows(ids, 3)
    x, y = ds[0]
    assert len(ds) == 3 and (y[:-1] == x[1:]).all()
    with pytest.raises(ValueError):
        lm_windows(ids[:2], 3)
    logits = torch.zeros(2, 3, 5)
    assert abs(float(lm_loss(logits, torch.zeros(2, 3, dtype=torch.long))) - np.log(5)) < 1e-5
    assert abs(ngram_bpc(ids, ids, 5, 1, 0.0) - np.log2(5)) < 0.05
    assert (
        ngram_bpc(ids, ids, 5, 2, 0.01) < 0.1
    )  # a deterministic cycle is almost free for a bigram


def test_forecast_helpers():
    y = np.arange(30.0)
    o = forecast_origins(slice(20, 30), 5, 3)
    x, t = make_windows(y, o, 5, 3)
    assert x.shape == (len(o), 5, 1) and t[0].tolist() == [20, 21, 22]
    assert forecast_errors(persistence_forecast(y, o, 3), t.numpy())['mae'] == 2.0
    assert seasonal_naive_forecast(y, np.array([10]), 4, 2).tolist() == [[8, 9, 8, 9]]
    with pytest.raises(ValueError):
        forecast_origins(slice(0, 5), 5, 3)
    f = Forecaster(3, 8)
    assert f(x).shape == (len(o), 3)
    with pytest.raises(ValueError):
        f(torch.randn(2, 5))
    with pytest.raises(ValueError):
        forecast_errors(np.zeros(3), np.zeros(4))


def test_date_pairs_and_seq2seq():
    pairs = date_pairs(300, seed=0)
    assert len({s for s, _ in pairs}) == 300
    v = CharTokenizer.from_text(''.join(s for s, _ in pairs))
    ds = DatePairs(pairs, v)
    src, lengths, tgt = seq2seq_collate([ds[i] for i in range(8)])
    assert tgt.shape == (8, 12) and decode_target(tgt[0]) == pairs[0][1]
    m = Seq2Seq(len(v) + 1, len(TGT_ITOS), 16, 32)
    assert m(src, lengths, tgt[:, :-1]).shape == (8, 11, len(TGT_ITOS))
    g, alpha = greedy_decode(m, src, lengths, 11)
    assert g.shape == (8, 11) and alpha.shape == (8, 11, src.shape[1])
    assert torch.allclose(alpha.sum(-1), torch.ones(8, 11), atol=1e-5)
    assert (alpha[1, :, lengths[1] :] == 0).all()  # no attention on padding
    assert beam_decode(m, src, lengths, 11, beam=3).shape == (8, 11)
    assert exact_match(tgt[:, 1:], tgt[:, 1:]) == 1.0
    with pytest.raises(ValueError):
        greedy_decode(m, src, lengths[:3], 11)
    with pytest.raises(ValueError):
        greedy_decode(m, src[:, :0], torch.ones(8, dtype=torch.long), 11)


def test_seq2seq_learner_overrides_step():
    from bigmodel_book.data import DataLoaders

    pairs = date_pairs(256, seed=1)
    v = CharTokenizer.from_text(''.join(s for s, _ in pairs))
    dls = DataLoaders.from_datasets(
        DatePairs(pairs[:192], v), DatePairs(pairs[192:], v), bs=32, collate_fn=seq2seq_collate
    )
    learn = Seq2SeqLearner(
        Seq2Seq(len(v) + 1, len(TGT_ITOS), 16, 32), dls, None, metrics=[exact_match], quiet=True
    )
    learn.fit(2, lr=3e-3)
    h = learn.recorder.history
    assert len(h) == 2 and h[-1]['train_loss'] < h[0]['train_loss'] + 1 and 'exact_match' in h[-1]


@pytest.mark.parametrize(
    'recipe,cfg',
    [
        (train_forecaster, ForecastConfig(series='sunspots', epochs=1, hidden=8)),
        (
            train_charlm,
            CharLMConfig(chars=20000, eval_chars=4000, epochs=1, hidden=16, seq_len=64),
        ),
        (train_seq2seq, Seq2SeqConfig(pairs=400, epochs=1, hidden=16)),
    ],
)
def test_recipes(tmp_path, recipe, cfg):
    cfg.out, cfg.quiet, cfg.device = tmp_path, True, 'cpu'
    _, metrics = recipe(cfg)
    assert (tmp_path / 'model.safetensors').exists() and json.loads(
        (tmp_path / 'metrics.json').read_text()
    ) == metrics
    assert all(np.isfinite(v) for k, v in metrics.items() if isinstance(v, float))


def test_recipe_defaults_are_the_cli_defaults():
    for cls in (ForecastConfig, CharLMConfig, Seq2SeqConfig):
        c = cls()
        assert (c.epochs, c.lr, c.bs, c.hidden) == (5, 3e-3, 64, 128)
    assert ForecastConfig().series == 'sunspots' and Seq2SeqConfig().pairs == 20_000
    assert (CharLMConfig().chars, CharLMConfig().seq_len, CharLMConfig().eval_chars) == (
        500_000,
        128,
        0,
    )


@pytest.mark.parametrize('task', ['sequence', 'rnn'])
def test_cli_requires_task(tmp_path, task):
    from bigmodel_book.cli.core import main

    with pytest.raises(SystemExit):
        main(['train', task, '--out', str(tmp_path)])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    ref = nn.LSTM(5, 7, 2, batch_first=True)
    ours = copy_from_torch(Recurrent('lstm', 5, 7, 2, batch_first=True), ref)
    x = torch.randn(3, 6, 5)
    out_gpu = ours.to('cuda')(x.to('cuda'))[0].cpu()
    assert torch.allclose(out_gpu, ref(x)[0], atol=1e-4)


def test_word_measures_and_ngram_samples():
    known = set(text_words("Now is the winter of our discontent; o'er the hills"))
    assert text_words("O'er the WINTER--'tis") == ["o'er", 'the', 'winter', 'tis']
    assert real_word_hits('now is the wintr', known).tolist() == [1, 1, 1, 0]
    assert real_word_hits('now is the wintr', known, min_len=4).tolist() == [0]
    with pytest.raises(ValueError, match='no words'):
        real_word_hits('12 -- ;;', known)
    with pytest.raises(TypeError):
        text_words(b'bytes')
    play = 'HAMLET\nTo be.\n\nHAMLET\nOr not.\n\nFIRST CLOWN\nAy.\n\nEnter Ghost\nALSO CAPS\n'
    assert speaker_lines(play) == ['HAMLET', 'FIRST CLOWN']  # the first line follows no blank
    ids = torch.tensor([1, 2, 3] * 50)
    s1 = ngram_sample(ids, 5, 30, order=2, alpha=0.0, seed=0)
    assert all((b - a) % 3 == 1 for a, b in zip(s1[:-1].tolist(), s1[1:].tolist()))
    u = ngram_sample(ids, 5, 3000, order=1, alpha=0.0, seed=1)
    assert set(u.tolist()) == {1, 2, 3} and abs((u == 2).float().mean().item() - 1 / 3) < 0.05
    assert torch.equal(ngram_sample(ids, 5, 20, seed=2), ngram_sample(ids, 5, 20, seed=2))
    for bad in (dict(n=0), dict(order=3)):
        with pytest.raises(ValueError):
            ngram_sample(ids, 5, **{'n': 5, **bad})
