"""Fast inference (6.9): speculative decoding equals greedy decoding, quantised layers equal their
dequantised reference (and torchao), a left-padded batch equals one prompt at a time, text model
folders and `bigmodel-book generate`, and `/generate` on the real server."""

import asyncio, json

import httpx, pytest, torch
import torch.nn.functional as F

from bigmodel_book.lifecycle.serve import (
    TextLimits,
    create_text_app,
    generate_load_test,
    read_events,
    start_server,
)
from bigmodel_book.text.gpt import GPT, generate
from bigmodel_book.text.infer import (
    QuantLinear,
    accept_reject,
    crop_cache,
    decode,
    dequantize_weight,
    generate_batch,
    left_pad,
    linear_bytes,
    load_text_model,
    lm_forward,
    pack_int4,
    prompt_ids,
    quantize_model,
    quantize_weight,
    save_text_model,
    speculative_generate,
    speculative_output_probs,
    stream_generate,
    stream_text,
    unpack_int4,
)
from bigmodel_book.text.instruct import ChatTokenizer
from bigmodel_book.text.tokenize import BPETokenizer

V = 40


def gpts(seed: int = 0):
    "A random target (2 blocks) and a random draft (1 block) over one vocabulary of 40 ids."
    torch.manual_seed(seed)
    return GPT(V, 64, 32, 4, 2, dropout=0.0).eval(), GPT(V, 64, 16, 2, 1, dropout=0.0).eval()


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randint(V, (int(torch.randint(1, 12, (), generator=g)),), generator=g).tolist()
        for _ in range(n)
    ]


@pytest.mark.parametrize('k', [1, 3, 6])
def test_speculative_greedy_equals_target_greedy(k):
    target, draft = gpts()
    for p in prompts(4, seed=k):
        out, stats = speculative_generate(target, draft, p, 30, k=k)
        assert out == generate(target, p, 30, 0.0) == decode(target, p, 30)
        assert stats.rounds == stats.target_calls and 0 <= stats.acceptance <= 1
    out, stats = speculative_generate(target, target, p, 30, k=k)  # a perfect draft
    assert out == decode(target, p, 30) and stats.acceptance == 1.0


def test_a_broken_cache_crop_would_be_caught():
    "The greedy check is sharp: continuing from a cache that kept a wrong token changes the text."
    target, _ = gpts(1)
    p = prompts(1, 3)[0]
    cache = target.new_cache()
    lm_forward(target, torch.tensor([p + [5]]), cache)  # a rejected draft token, not cropped
    wrong = lm_forward(target, torch.tensor([[7]]), cache)[0, -1]
    crop_cache(cache, len(p))
    right = lm_forward(target, torch.tensor([[7]]), cache)[0, -1]
    full = lm_forward(target, torch.tensor([p + [7]]))[0, -1]
    assert torch.allclose(right, full, atol=1e-5) and not torch.allclose(wrong, full, atol=1e-3)


def test_speculative_sampling_keeps_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p, q = torch.rand(6, generator=g), torch.rand(6, generator=g)
        q[0] = 0
        p, q = p / p.sum(), q / q.sum()
        assert torch.allclose(speculative_output_probs(p, q), p, atol=1e-6)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.2, 0.6])
    first = []
    for _ in range(3000):
        d = int(torch.multinomial(q, 1, generator=g))
        m, nxt = accept_reject(p.repeat(2, 1), q[None], [d], g)
        first.append(d if m == 1 else nxt)
    share = torch.bincount(torch.tensor(first), minlength=3) / 3000
    assert (share - p).abs().max() < 0.04
    target, draft = gpts(2)
    out, _ = speculative_generate(target, draft, [1, 2], 20, k=3, temperature=0.8, top_k=5, seed=0)
    assert len(out) == 22 and all(0 <= i < V for i in out)


def test_speculative_refuses_bad_input():
    target, draft = gpts()
    with pytest.raises(ValueError, match='one vocabulary'):
        speculative_generate(target, GPT(V + 1, 64, 16, 2, 1), [1], 5)
    with pytest.raises(ValueError, match='exceed the context'):
        speculative_generate(target, draft, [1] * 10, 60)
    with pytest.raises(ValueError, match='k >= 1'):
        speculative_generate(target, draft, [1], 5, k=0)


def test_stream_generate_draws_what_generate_draws():
    target, _ = gpts(3)
    p = prompts(1, 5)[0]
    for kw in (dict(temperature=0.0), dict(temperature=0.9, top_k=7, seed=4)):
        got = list(stream_generate(target, p, 80, **kw))  # 80 > block 64: the window slides
        assert p + got == generate(
            target, p, 80, kw['temperature'], kw.get('top_k'), seed=kw.get('seed')
        )
    assert (
        list(stream_generate(target, p, 10, temperature=0.0, stop=decode(target, p, 3)[-1]))[-1]
        == decode(target, p, 3)[-1]
    )


@pytest.mark.parametrize('bits,group', [(8, None), (8, 16), (4, 32), (4, 8)])
def test_quantised_matmul_equals_dequantised_reference(bits, group):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(5, 3, 64)
    q, s = quantize_weight(lin.weight, bits, group)
    w_hat = dequantize_weight(q, s)
    ql = QuantLinear(lin, bits, group)
    with torch.no_grad():
        assert torch.allclose(ql(x), F.linear(x, w_hat, lin.bias), atol=1e-5)
    assert (w_hat - lin.weight).abs().max() <= s.max() / 2 + 1e-7  # half a step at most
    assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
    assert torch.equal(ql.weight_int(), q)


def test_int4_packing_and_bytes():
    q = torch.randint(-8, 8, (6, 10), dtype=torch.int8)
    assert pack_int4(q).shape == (6, 5) and torch.equal(unpack_int4(pack_int4(q)), q)
    target, _ = gpts()
    fp32 = linear_bytes(target)
    assert fp32 / linear_bytes(quantize_model(target, 8)) >= 3.5
    assert fp32 / linear_bytes(quantize_model(target, 4, 32)) >= 6
    with pytest.raises(ValueError, match='multiple of group_size'):
        quantize_weight(torch.randn(4, 30), 4, 32)
    with pytest.raises(ValueError, match='bits 4 or 8'):
        quantize_weight(torch.randn(4, 32), 3)


def test_quantisation_equals_torchao():
    pytest.importorskip('torchao')
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 32)
    for (bits, group), cfg in {
        (8, None): Int8WeightOnlyConfig(),
        (4, 32): IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    }.items():
        q, s = quantize_weight(lin.weight, bits, group)
        ao = torch.nn.Sequential(torch.nn.Linear(64, 32))
        ao[0].load_state_dict(lin.state_dict())
        quantize_(ao, cfg)
        assert torch.equal(ao[0].weight.qdata.reshape(q.shape), q)
        assert torch.allclose(ao[0].weight.scale.reshape(s.shape), s)


def test_left_padded_batch_equals_one_at_a_time():
    target, _ = gpts(4)
    ps = prompts(5, 7)
    ids, pad = left_pad(ps)
    assert pad.sum(1).tolist() == [ids.shape[1] - len(p) for p in ps]
    assert generate_batch(target, ps, 20) == [decode(target, p, 20) for p in ps]
    assert generate_batch(target, ps[:1], 0) == [ps[0]]
    with pytest.raises(ValueError, match='no empty prompt'):
        left_pad([[1], []])
    with pytest.raises(ValueError, match='exceed the context'):
        generate_batch(target, ps, 60)


@pytest.fixture(scope='module')
def chat_dir(tmp_path_factory):
    bpe = BPETokenizer.train(['a soft dress, a warm top, a long skirt. ' * 10], 280)
    tok = ChatTokenizer(bpe)
    torch.manual_seed(0)
    model = GPT(tok.vocab_size, 48, 32, 2, 1, dropout=0.0).eval()
    return save_text_model(model, tok, tmp_path_factory.mktemp('text') / 'chat'), model, tok


def test_text_model_folder_and_chat_template(chat_dir, tmp_path):
    d, model, tok = chat_dir
    m2, tok2, chat = load_text_model(d)
    assert chat and isinstance(tok2, ChatTokenizer) and tok2.bpe.merges == tok.bpe.merges
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values())
    )
    ids, stop = prompt_ids(tok, 'a dress', chat=True)
    assert ids == tok.chat('a dress')[0] and stop == tok.end
    assert prompt_ids(tok, 'a dress') == (tok.encode('a dress'), None)
    with pytest.raises(ValueError, match='no chat template'):
        prompt_ids(tok.bpe, 'a dress', chat=True)
    with pytest.raises(ValueError, match='needs a ChatTokenizer'):
        save_text_model(model, tok.bpe, tmp_path / 'x', chat=True)
    reply = ''.join(stream_text(model, tok, 'a dress', 10, chat=True, temperature=0.0))
    new = decode(model, ids, 10)[len(ids) :]
    assert reply == tok.decode(new[: new.index(tok.end)] if tok.end in new else new)


def test_generate_cli_applies_the_chat_template(chat_dir, capsys):
    from bigmodel_book.cli.core import main

    d, model, tok = chat_dir
    args = ['generate', '--checkpoint', str(d), '--prompt', 'a dress', '--n', '8']
    main(args + ['--temperature', '0'])
    reply = capsys.readouterr().out.rstrip('\n')
    assert reply == ''.join(stream_text(model, tok, 'a dress', 8, chat=True, temperature=0.0))
    main(args + ['--temperature', '0', '--no-chat'])
    assert capsys.readouterr().out.startswith('a dress')


GOOD = {'prompt': 'a soft', 'max_new_tokens': 6, 'temperature': 0.0}
BAD = {
    'bad JSON': (b'{"prompt": "a",', 400),
    'not an object': ([1, 2], 422),
    'prompt missing': ({'max_new_tokens': 3}, 422),
    'prompt a number': ({'prompt': 3}, 422),
    'max_new_tokens a string': ({'prompt': 'a', 'max_new_tokens': '3'}, 422),
    'max_new_tokens a bool': ({'prompt': 'a', 'max_new_tokens': True}, 422),
    'max_new_tokens a float': ({'prompt': 'a', 'max_new_tokens': 3.0}, 422),
    'max_new_tokens 0': ({'prompt': 'a', 'max_new_tokens': 0}, 422),
    'max_new_tokens over the limit': ({'prompt': 'a', 'max_new_tokens': 33}, 422),
    'temperature a string': ({'prompt': 'a', 'temperature': 'hot'}, 422),
    'temperature < 0': ({'prompt': 'a', 'temperature': -0.1}, 422),
    'top_k 0': ({'prompt': 'a', 'top_k': 0}, 422),
    'top_k negative': ({'prompt': 'a', 'top_k': -3}, 422),
    'stream a string': ({'prompt': 'a', 'stream': 'yes'}, 422),
    'prompt over max chars': ({'prompt': 'a' * 401}, 413),
    'prompt over the context': ({'prompt': 'zq ' * 120}, 413),
    'unknown field': ({'prompt': 'a', 'max_tokens': 3}, 422),
}


@pytest.fixture(scope='module')
def text_server(chat_dir):
    args = ['--max-new-tokens', '32', '--max-prompt-chars', '400', '--time-limit', '20']
    with start_server(chat_dir[0], timeout=300, args=args) as s:
        with httpx.Client(base_url=s.url, timeout=30) as client:
            yield s, client


def test_generate_streams_tokens_from_the_real_server(text_server, chat_dir):
    s, client = text_server
    _, model, tok = chat_dir
    meta = client.get('/metadata').json()
    assert meta['kind'] == 'text' and meta['chat'] and meta['limit_max_new_tokens'] == 32
    with client.stream('POST', '/generate', json={**GOOD, 'stream': True}) as r:
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/event-stream')
        events = read_events(r.iter_lines())
    kinds = [e for e, _ in events]
    assert kinds[-1] == 'done' and set(kinds[:-1]) <= {'token'} and len(kinds) > 1
    done = events[-1][1]
    whole = client.post('/generate', json=GOOD).json()
    direct = ''.join(stream_text(model, tok, GOOD['prompt'], 6, chat=True, temperature=0.0))
    assert done['text'] == whole['text'] == direct
    assert whole['finish_reason'] in ('length', 'stop') and len(whole['tokens']) <= 6
    assert ''.join(d['text'] for e, d in events[:-1]) == done['text']


@pytest.mark.parametrize('case', list(BAD))
def test_generate_bad_requests_are_json_errors(text_server, case):
    _, client = text_server
    body, want = BAD[case]
    kw = {'content': body} if isinstance(body, bytes) else {'content': json.dumps(body).encode()}
    r = client.post('/generate', headers={'content-type': 'application/json'}, **kw)
    assert r.status_code == want, (case, r.status_code, r.text)
    assert set(r.json()) == {'error', 'detail'} and r.json()['detail']
    assert client.post('/generate', json=GOOD).status_code == 200  # still serving


def test_generate_wrong_content_type(text_server):
    _, client = text_server
    r = client.post('/generate', content=b'prompt=a', headers={'content-type': 'text/plain'})
    assert r.status_code == 415 and r.json()['error'] == 'wrong content type'


def test_generate_bounded_load(text_server):
    s, _ = text_server
    r = generate_load_test(
        s.url,
        ['a soft', 'a warm top'],
        n_requests=12,
        concurrency=4,
        max_new_tokens=4,
        max_seconds=20,
    )
    assert r['failures'] == 0 and r['requests'] + r['skipped'] == 12 and r['requests'] >= 1
    with pytest.raises(ValueError):
        generate_load_test(s.url, ['a'], n_requests=0)


def test_time_limit_and_full_queue_in_process(chat_dir, tmp_path):
    "In-process (ASGI): a tiny time limit stops a long generation; a full queue is a 503."
    _, model, tok = chat_dir
    d = save_text_model(model, tok, tmp_path / 'base', chat=False)  # no <|end|> to stop at

    async def post(app, body):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url='http://t') as c:
            return await c.post('/generate', json=body)

    slow = create_text_app(
        d, limits=None, text_limits=TextLimits(time_limit=0.3, max_new_tokens=4000)
    )
    r = asyncio.run(post(slow, {'prompt': 'a', 'max_new_tokens': 4000, 'temperature': 0.0}))
    assert r.status_code in (200, 503)
    if r.status_code == 200:
        assert r.json()['finish_reason'] == 'time_limit' and len(r.json()['tokens']) < 4000
    one = create_text_app(d, text_limits=TextLimits(max_waiting=1, max_new_tokens=4000))

    async def burst():
        transport = httpx.ASGITransport(app=one)
        async with httpx.AsyncClient(transport=transport, base_url='http://t', timeout=60) as c:
            body = {'prompt': 'a', 'max_new_tokens': 200, 'temperature': 0.0}
            return await asyncio.gather(*(c.post('/generate', json=body) for _ in range(6)))

    codes = [r.status_code for r in asyncio.run(burst())]
    assert 503 in codes and 200 in codes
    with pytest.raises(ValueError, match='positive'):
        TextLimits(time_limit=0).check()
