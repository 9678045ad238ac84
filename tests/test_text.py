"""Tests of bigmodel_book.text: BPE round trip (property), attention against PyTorch, bad input,
the GPT cache, the recipes and the CLI."""

import json, warnings

import pytest, torch
import torch.nn.functional as F
from hypothesis import given, settings, HealthCheck, strategies as st

from bigmodel_book.sequence.charlm import CharTokenizer, lm_windows, sample_next
from bigmodel_book.text.tokenize import BPETokenizer, WordVocab, pretokenize
from bigmodel_book.text.attention import (
    attention,
    causal_mask,
    MultiHeadAttention,
    TransformerClassifier,
)
from bigmodel_book.text.classify import (
    BagOfEmbeddings,
    TextCNN,
    BiLSTMClassifier,
    ReviewsConfig,
    train_reviews,
)
from bigmodel_book.text.mining import skipgram_pairs
from bigmodel_book.text.gpt import (
    GPT,
    generate,
    generate_text,
    RandomWindows,
    eval_bits_per_char,
    GPTTrainConfig,
    train_gpt,
    GenerateConfig,
    generate_from_checkpoint,
    load_gpt,
)


CORPUS = [
    "Love this dress! The fabric is soft, but it runs small.",
    "Très jolie robe 👗, taille 38 — parfaite.",
    "Returned it: the zipper broke after 2 days...",
    "日本語のレビュー：とても良い",
    "tabs\tand\nnewlines  and   spaces",
] * 3


@pytest.fixture(scope='module')
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=320, min_freq=1)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text())
def test_bpe_round_trips_any_unicode(bpe, s):
    assert ''.join(pretokenize(s)) == s
    ids = bpe.encode(s)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == s


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8), st.text(max_size=60))
def test_bpe_trained_on_random_text_round_trips(texts, s):
    tok = BPETokenizer.train(texts, vocab_size=300, min_freq=1)
    assert tok.decode(tok.encode(s)) == s and tok.decode(tok.encode(texts[0])) == texts[0]


def test_bpe_merges_and_bad_input(bpe, tmp_path):
    assert len(bpe.merges) > 0 and len(bpe.encode(CORPUS[0])) < len(CORPUS[0].encode())
    assert bpe.encode('') == [] and bpe.decode([]) == ''
    with pytest.raises(ValueError, match='outside the vocabulary'):
        bpe.decode([bpe.vocab_size])
    with pytest.raises(TypeError):
        bpe.encode(None)
    with pytest.raises(ValueError, match='at least 256'):
        BPETokenizer.train(CORPUS, vocab_size=100)
    assert bpe.decode([0xE2]) == '\ufffd'
    with pytest.raises(UnicodeDecodeError):
        bpe.decode([0xE2], errors='strict')
    assert BPETokenizer.load(bpe.save(tmp_path / 'bpe.json')).merges == bpe.merges


def test_bpe_token_counts_close_to_tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = [t for t in CORPUS] * 5
    ours = BPETokenizer.train(texts, vocab_size=300, min_freq=2)
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=300,
            min_frequency=2,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    a, b = sum(len(ours.encode(t)) for t in CORPUS), sum(len(hf.encode(t).ids) for t in CORPUS)
    assert 0.8 < a / b < 1.25


def test_char_tokenizer_unknowns():
    tok = CharTokenizer.from_text('abc ')
    assert tok.decode(tok.encode('cab a')) == 'cab a'
    with pytest.raises(ValueError, match='not in the vocabulary'):
        tok.encode('abz')
    assert (
        tok.encode('abz', unknown='unk')[-1] == 0
        and tok.decode(tok.encode('abz', unknown='skip')) == 'ab'
    )
    with pytest.raises(ValueError):
        CharTokenizer.from_text('')
    with pytest.raises(ValueError):
        tok.decode([99])


def test_word_vocab_empty_and_long():
    v = WordVocab.from_texts(['nice dress nice', 'dress too small small'], min_freq=1)
    assert v.encode('') == [] and v.encode('zebra')[0] == WordVocab.UNK
    batch = v.encode_batch(['', 'nice ' * 1000], max_len=50)
    assert batch.shape == (2, 50) and batch[0, 0] == WordVocab.UNK
    with pytest.raises(TypeError):
        v.encode_batch('one string')


@pytest.mark.parametrize('causal', [False, True])
def test_attention_matches_sdpa(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 4, 6, 16), torch.randn(2, 4, 6, 8)
    assert torch.allclose(
        attention(q, k, v, causal=causal)[0],
        F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        atol=1e-5,
    )
    mask = torch.rand(2, 1, 6, 6) > 0.3
    mask[..., 0] = True
    assert torch.allclose(
        attention(q, k, v, mask=mask)[0],
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        atol=1e-5,
    )
    assert torch.equal(
        causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    )


def test_mha_fused_unfused_and_cache():
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, causal=True).eval()
    x = torch.randn(2, 9, 32)
    y = m(x)
    m.fused = False
    assert torch.allclose(m(x), y, atol=1e-5)
    m.fused = True
    cache = {}
    out = torch.cat(
        [m(x[:, :5], cache=cache), m(x[:, 5:7], cache=cache), m(x[:, 7:], cache=cache)], 1
    )
    assert torch.allclose(out, y, atol=1e-5)
    with pytest.raises(ValueError):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError):
        m(torch.randn(9, 32))


@pytest.mark.parametrize(
    'make',
    [
        lambda: BagOfEmbeddings(40),
        lambda: TextCNN(40),
        lambda: BiLSTMClassifier(40),
        lambda: TransformerClassifier(40, 7, max_len=8),
    ],
)
def test_classifiers_shapes_and_bad_input(make):
    m = make().eval()
    ids = torch.randint(1, 40, (3, 12))
    ids[1, 1:] = 0
    assert m(ids).shape == (3, 7)
    with pytest.raises(ValueError):
        m(torch.rand(3, 12))


def _tiny_gpt():
    torch.manual_seed(0)
    return GPT(20, block_size=16, d_model=32, n_heads=4, n_layers=2, dropout=0.0).eval()


def test_gpt_cache_equals_full_and_windows():
    g = _tiny_gpt()
    start = [1, 2, 3]
    assert generate(g, start, 13, 0.0, use_cache=True) == generate(
        g, start, 13, 0.0, use_cache=False
    )
    out = generate(g, start, 40, 0.9, top_k=5, seed=1)  # past the context: sliding window, no crash
    assert len(out) == 43 and max(out) < 20
    with pytest.raises(ValueError, match='exceed the context'):
        g(torch.ones(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match='ids must lie'):
        g(torch.full((1, 3), 20))
    with pytest.raises(ValueError):
        generate(g, [], 5)
    with pytest.raises(ValueError):
        sample_next(torch.randn(1, 20), temperature=-1)
    with pytest.raises(ValueError):
        sample_next(torch.randn(1, 20), top_k=0)


def test_generate_text_bad_prompts():
    tok = CharTokenizer.from_text('abcdefghijklmnopqrs')
    g = _tiny_gpt()
    with pytest.warns(UserWarning, match='never saw'):
        out = generate_text(g, tok, 'ab☃Z', n=5, seed=0)
    assert out.startswith('ab') and len(out) == 7
    assert len(generate_text(g, tok, '', n=5, seed=0)) == 5
    assert len(generate_text(g, tok, 'abc' * 20, n=5, seed=0)) == 65


def test_windows_and_skipgram():
    ids = torch.arange(50)
    ds = lm_windows(ids, 8)
    x, y = ds[0]
    assert torch.equal(y, x + 1) and len(ds) == 6
    x, y = RandomWindows(ids, 8, 4)[0]
    assert torch.equal(y, x + 1)
    with pytest.raises(ValueError):
        lm_windows(ids[:5], 8)
    c, t = skipgram_pairs([[2, 3, 4]], window=1)
    assert sorted(zip(c.tolist(), t.tolist())) == [(2, 3), (3, 2), (3, 4), (4, 3)]


def test_cli_gpt_train_and_generate(tmp_path, capsys):
    small = dict(
        epochs=1,
        windows=64,
        bs=16,
        block_size=32,
        d_model=32,
        n_layers=1,
        train_size=50000,
        device='cpu',
        quiet=True,
    )
    _, m = train_gpt(GPTTrainConfig(tokenizer='char', out=tmp_path, **small))
    assert m['task'] == 'gpt' and m['valid_bpc'] > 0
    assert (tmp_path / 'model.safetensors').exists() and json.loads(
        (tmp_path / 'gpt_config.json').read_text()
    )['block_size'] == 32
    with pytest.warns(UserWarning):
        text = generate_from_checkpoint(
            GenerateConfig(tmp_path, prompt='ROMEO☃', n=20, seed=0, device='cpu')
        )
    assert text.startswith('ROMEO') and len(text) == 25
    assert generate_from_checkpoint(
        GenerateConfig(tmp_path / 'model.safetensors', n=10, use_cache=False, device='cpu')
    )
    with pytest.raises(FileNotFoundError):
        load_gpt(tmp_path / 'nowhere' / 'model.safetensors')
    bpe_dir = tmp_path / 'bpe'
    m = train_gpt(GPTTrainConfig(vocab_size=300, out=bpe_dir, **small))
    model, tok = load_gpt(bpe_dir)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300 and model.vocab_size == 300
    with warnings.catch_warnings():
        warnings.simplefilter(
            'error'
        )  # byte-level BPE spells unseen characters in bytes: no warning, the prompt survives
        assert generate_from_checkpoint(
            GenerateConfig(bpe_dir, prompt='ROMEO☃', n=5, seed=0, device='cpu')
        ).startswith('ROMEO☃')
    with pytest.raises(ValueError, match='at least 256'):
        train_gpt(GPTTrainConfig(vocab_size=100, out=tmp_path / 'bad', **small))


def test_cli_text_commands(tmp_path, capsys):
    "The command line: `train text --task gpt` and `generate` run the recipes; bad options exit."
    from bigmodel_book.cli.core import main

    small = ['--epochs', '1', '--windows', '64', '--bs', '16', '--block-size', '32']
    small += ['--d-model', '32', '--n-layers', '1', '--train-size', '50000']
    small += ['--device', 'cpu', '--quiet', '--tokenizer', 'char']
    assert main(['train', 'text', '--task', 'gpt', *small, '--out', str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])['task'] == 'gpt'
    with pytest.warns(UserWarning):
        assert (
            main(
                [
                    'generate',
                    '--checkpoint',
                    str(tmp_path),
                    '--prompt',
                    'ROMEO☃',
                    '--n',
                    '20',
                    '--seed',
                    '0',
                    '--device',
                    'cpu',
                ]
            )
            == 0
        )
    text = capsys.readouterr().out
    assert text.startswith('ROMEO') and len(text.rstrip('\n')) == 25
    with pytest.raises(SystemExit):
        main(['train', 'text', '--task', 'gpt', '--vocab-size', '100', '--out', str(tmp_path)])


def test_eval_bits_per_char():
    tok = CharTokenizer.from_text('abcdefgh')
    g = GPT(tok.vocab_size, block_size=8, d_model=16, n_heads=2, n_layers=1, dropout=0.0)
    ds = lm_windows(torch.tensor(tok.encode('abcdefgh' * 10)), 8)
    x, y = ds.arrays
    expected = (
        F.cross_entropy(g(x).flatten(0, 1), y.flatten()).item()
        / torch.log(torch.tensor(2.0)).item()
    )
    assert (
        abs(eval_bits_per_char(g, ds, tok, bs=3) - expected) < 1e-5
    )  # one char per token: mean bits per token
    bpe = BPETokenizer.train(['abcdefgh ' * 50], vocab_size=270, min_freq=1)
    ids = torch.tensor(bpe.encode('abcdefgh ' * 30))
    ds = lm_windows(ids, 4)
    g = GPT(bpe.vocab_size, block_size=4, d_model=16, n_heads=2, n_layers=1, dropout=0.0)
    x, y = ds.arrays
    nats = F.cross_entropy(g(x).flatten(0, 1), y.flatten(), reduction='sum').item()
    assert (
        abs(
            eval_bits_per_char(g, ds, bpe)
            - nats / 0.6931471805599453 / len(bpe.decode(y.flatten().tolist()))
        )
        < 1e-4
    )
    assert len(bpe.decode(y.flatten().tolist())) > y.numel()  # several characters per token


def test_cli_reviews(tmp_path):
    _, m = train_reviews(
        ReviewsConfig(model='bag', epochs=1, train_size=500, device='cpu', out=tmp_path, quiet=True)
    )
    assert m['task'] == 'reviews' and 0 <= m['test_rec_accuracy'] <= 1
    assert (tmp_path / 'vocab.json').exists()
