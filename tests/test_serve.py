"""Serving: the real uvicorn server on 127.0.0.1 in a subprocess, over HTTP; every bad request
is a 4xx JSON error and the server keeps answering."""

import asyncio, json, math, select, socket, time

import httpx, numpy as np, pytest, torch

from bigmodel_book.lifecycle.export import save_model_dir
from bigmodel_book.lifecycle.serve import (
    RequestError,
    ServeLimits,
    TokenBucket,
    load_test,
    parse_batch,
    parse_json_body,
    read_token,
    serve_model_dir,
    start_server,
)
from bigmodel_book.train.learner import mlp

MAX_BATCH, MAX_BODY = 16, 100_000
GOOD = {'inputs': [[0.5] * 64, [0.0] * 64]}
J = {'content-type': 'application/json'}


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = mlp(n_hidden=32).eval()
    d = save_model_dir(
        model,
        tmp_path_factory.mktemp('serve') / 'mlp',
        builder='bigmodel_book.train.learner:mlp',
        kwargs={'n_hidden': 32},
        input_shape=[64],
        labels=list('abcdefghij'),
        formats=(),
    )
    return model, d


@pytest.fixture(scope='module')
def server(model_dir):
    with start_server(
        model_dir[1], timeout=300, args=['--max-batch', str(MAX_BATCH), '--max-body', str(MAX_BODY)]
    ) as s:
        with httpx.Client(base_url=s.url, timeout=30) as client:
            yield s, client


def test_health_metadata_predict(server, model_dir):
    s, client = server
    assert s.url.startswith('http://127.0.0.1:')
    assert client.get('/health').json() == {'status': 'ok'}
    meta = client.get('/metadata').json()
    assert (
        meta['input_shape'] == [64] and meta['max_batch'] == MAX_BATCH and meta['labels'][0] == 'a'
    )
    r = client.post('/predict', json=GOOD)
    assert r.status_code == 200
    body = r.json()
    with torch.no_grad():
        want = model_dir[0](torch.tensor(GOOD['inputs'])).softmax(-1)
    assert torch.allclose(torch.tensor(body['probabilities']), want, atol=1e-6)
    assert body['predictions'] == want.argmax(-1).tolist() and body['labels'] == [
        'abcdefghij'[i] for i in body['predictions']
    ]
    assert (
        client.post('/predict', json={'inputs': [[1] * 64]}).status_code == 200
    )  # integers are numbers too


BAD = {
    'wrong shape': (dict(json={'inputs': [[0.0] * 63]}), 422),
    'wrong rank': (dict(json={'inputs': [[[0.0] * 64]]}), 422),
    'ragged': (dict(json={'inputs': [[0.0] * 64, [0.0] * 10]}), 422),
    'scalar inputs': (dict(json={'inputs': 3}), 422),
    'wrong dtype str': (dict(json={'inputs': [['x'] * 64]}), 422),
    'wrong dtype bool': (dict(json={'inputs': [[True] * 64]}), 422),
    'null': (dict(json={'inputs': [[None] * 64]}), 422),
    'NaN': (dict(content=json.dumps({'inputs': [[math.nan] * 64]}), headers=J), 422),
    'inf': (dict(content=json.dumps({'inputs': [[math.inf] + [0.0] * 63]}), headers=J), 422),
    '-Infinity literal': (
        dict(content='{"inputs": [[-Infinity' + ', 0' * 63 + ']]}', headers=J),
        422,
    ),
    'float32 overflow': (dict(json={'inputs': [[1e39] * 64]}), 422),
    'empty batch': (dict(json={'inputs': []}), 422),
    'batch over limit': (dict(json={'inputs': [[0.0] * 64] * (MAX_BATCH + 1)}), 413),
    'body over limit': (
        dict(content=b'{"inputs": [[' + b'0.0,' * 40_000 + b'0.0]]}', headers=J),
        413,
    ),
    'malformed JSON': (dict(content=b'{"inputs": [[1, 2', headers=J), 400),
    'not UTF-8': (dict(content=b'\xff\xfe{}', headers=J), 400),
    'wrong content type': (
        dict(content=json.dumps(GOOD), headers={'content-type': 'text/plain'}),
        415,
    ),
    'no content type': (dict(content=json.dumps(GOOD)), 415),
    'form data': (dict(data={'inputs': '1'}), 415),
    'missing field': (dict(json={'images': GOOD['inputs']}), 422),
    'extra field': (dict(json={**GOOD, 'debug': True}), 422),
    'JSON array body': (dict(json=[1, 2]), 422),
    'nested 40,000 deep': (
        dict(content='{"inputs": ' + '[' * 40_000 + ']' * 40_000 + '}', headers=J),
        400,
    ),
    'nested 500 deep': (dict(content='{"inputs": ' + '[' * 500 + ']' * 500 + '}', headers=J), 422),
    'nested objects': (
        dict(content='{"inputs": ' + '{"a": ' * 5000 + '1' + '}' * 5000 + '}', headers=J),
        400,
    ),
    '5,000-digit integer': (dict(content='{"inputs": [[' + '9' * 5000 + ']]}', headers=J), 422),
    '5,000-digit float': (dict(content='{"inputs": [[0.' + '1' * 5000 + ']]}', headers=J), 422),
    'huge exponent': (dict(content='{"inputs": [[1e999999' + ', 0' * 63 + ']]}', headers=J), 422),
    'booleans mixed with numbers': (dict(json={'inputs': [[True] + [0.5] * 63]}), 422),
    'a boolean in the second input': (
        dict(json={'inputs': [[0.5] * 64, [0.5] * 63 + [False]]}),
        422,
    ),
    'garbage bytes': (dict(content=bytes(range(256)) * 4, headers=J), 400),
    'empty body': (dict(content=b'', headers=J), 400),
    'JSON null': (dict(content=b'null', headers=J), 422),
    'JSON string': (dict(content=b'"inputs"', headers=J), 422),
    'inputs an object': (dict(json={'inputs': {'a': 1}}), 422),
    'inputs of objects': (dict(json={'inputs': [{'a': 1}] * 2}), 422),
    'lone surrogate': (dict(content=b'{"inputs": ["\\ud800"]}', headers=J), 422),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_request_is_4xx_json_and_server_survives(server, case):
    _, client = server
    kw, status = BAD[case]
    r = client.post('/predict', **kw)
    assert r.status_code == status, (case, r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {'error', 'detail'} and len(body['detail']) > 10
    assert client.post('/predict', json=GOOD).status_code == 200
    assert client.get('/health').status_code == 200


def test_body_limit_without_content_length(server):
    _, client = server

    def chunks():
        yield b'{"inputs": [['
        for _ in range(100):
            yield b'0.0,' * 1000
        yield b'0.0]]}'

    r = client.post('/predict', content=chunks(), headers=J)
    assert r.status_code == 413 and 'limit' in r.json()['detail']
    assert client.post('/predict', json=GOOD).status_code == 200


def test_unknown_route_and_method(server):
    _, client = server
    assert client.get('/nothing').status_code == 404 and 'detail' in client.get('/nothing').json()
    assert client.get('/predict').status_code == 405


def test_small_load(server):
    s, client = server
    res = load_test(s.url, [[0.1] * 64, [0.9] * 64], n_requests=100, concurrency=8)
    assert res['failures'] == 0 and res['requests'] == 100 and 0 < res['p50_ms'] <= res['p99_ms']
    assert client.post('/predict', json=GOOD).status_code == 200


def test_tampered_model_dir_refuses_to_start(model_dir, tmp_path):
    import shutil

    d = tmp_path / 'bad'
    shutil.copytree(model_dir[1], d)
    b = bytearray((d / 'model.safetensors').read_bytes())
    b[-1] ^= 1
    (d / 'model.safetensors').write_bytes(bytes(b))
    with pytest.raises(RuntimeError, match='modified'):
        start_server(d, timeout=300)


def test_serve_arguments(model_dir, capsys):
    from bigmodel_book.cli.core import main

    with pytest.raises(ValueError, match='port'):
        serve_model_dir(model_dir[1], port=70000)
    assert main(['serve', '--model', str(model_dir[1]), '--port', '70000']) == 1
    assert 'port' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['serve'])


def test_parse_batch_unit():
    assert parse_batch([[1, 2]], [2], 4).dtype == np.float32
    with pytest.raises(RequestError) as e:
        parse_batch([[1, 2]] * 5, [2], 4)
    assert e.value.status == 413


@pytest.mark.gpu
def test_serving_on_cuda(model_dir):
    with start_server(model_dir[1], timeout=300, args=['--device', 'cuda']) as s:
        with httpx.Client(base_url=s.url, timeout=30) as client:
            assert client.get('/metadata').json()['device'].startswith('cuda')
            body = client.post('/predict', json=GOOD).json()
            with torch.no_grad():
                want = model_dir[0](torch.tensor(GOOD['inputs'])).softmax(-1)
            assert torch.allclose(torch.tensor(body['probabilities']), want, atol=1e-5)
            assert client.post('/predict', json={'inputs': []}).status_code == 422


# --- hardening (issue 15): limits, timeouts, token, rate limit, raw sockets ----------------------

TOKEN = 'test-token-0123456789'


def _addr(url: str) -> tuple[str, int]:
    host, port = url.removeprefix('http://').split(':')
    return host, int(port)


def _parse(answer: bytes) -> tuple[int, dict, dict]:
    "Status, headers and JSON body of a raw HTTP/1.1 answer."
    head, _, body = answer.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    headers = dict(line.lower().split(': ', 1) for line in lines[1:] if ': ' in line)
    return int(lines[0].split()[1]), headers, json.loads(body)


def _raw(url: str, data: bytes, timeout: float = 10.0) -> tuple[int, dict, dict]:
    "Send `data` on a fresh connection, read the answer until the server closes."
    with socket.create_connection(_addr(url), timeout=timeout) as s:
        s.sendall(data)
        answer = b''
        while chunk := s.recv(65536):
            answer += chunk
    return _parse(answer)


def _trickle(url: str, head: bytes, interval: float = 0.2, limit: float = 15.0):
    """Send `head`, then one byte every `interval` s until the server answers (at most `limit` s);
    the answer's status and JSON body and the seconds it took."""
    t0 = time.monotonic()
    with socket.create_connection(_addr(url), timeout=limit) as s:
        s.sendall(head)
        while time.monotonic() - t0 < limit:
            if select.select([s], [], [], interval)[0]:
                break
            try:
                s.sendall(b'a')
            except OSError:
                break
        answer = b''
        while chunk := s.recv(65536):
            answer += chunk
    status, _, body = _parse(answer)
    return status, body, time.monotonic() - t0


def _json_error(status: int, body: dict, want: int):
    assert status == want, (status, body)
    assert set(body) == {'error', 'detail'} and len(body['detail']) > 10


@pytest.fixture(scope='module')
def guarded(model_dir, tmp_path_factory):
    "A server with a token, a 1 s header timeout, a 2 s body timeout and 12 connections at most."
    token_file = tmp_path_factory.mktemp('token') / 'token'
    token_file.write_text(TOKEN + '\n')
    args = ['--token-file', str(token_file), '--header-timeout', '1', '--body-timeout', '2']
    args += ['--max-connections', '12', '--max-body', str(MAX_BODY), '--max-header', '4096']
    with start_server(model_dir[1], timeout=300, args=args) as s:
        yield s


def test_raw_socket_refusals_are_json(server):
    s, client = server
    status, _, body = _raw(s.url, b'HELLO THERE\r\n\r\n')
    _json_error(status, body, 400)
    status, _, body = _raw(s.url, b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + bytes(300))
    _json_error(status, body, 400)  # a TLS hello sent to plain HTTP
    # a body over the limit without Content-Length (chunked), sent whole before reading: a 413,
    # not a connection reset
    chunk = b'0.0,' * 10_000
    body = b''.join(b'%x\r\n%s\r\n' % (len(chunk), chunk) for _ in range(5)) + b'0\r\n\r\n'
    head = b'POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n'
    status, _, answer = _raw(s.url, head + b'transfer-encoding: chunked\r\n\r\n' + body)
    _json_error(status, answer, 413)
    # the same with a Content-Length over the limit
    status, _, answer = _raw(s.url, head + b'content-length: %d\r\n\r\n' % len(body) + body)
    _json_error(status, answer, 413)
    assert client.post('/predict', json=GOOD).status_code == 200


def test_oversized_headers_are_431(server):
    s, client = server
    big = b'x-big: ' + b'a' * 100_000 + b'\r\n'
    status, _, body = _raw(s.url, b'GET /health HTTP/1.1\r\nhost: x\r\n' + big + b'\r\n')
    _json_error(status, body, 431)
    r = client.get('/health', headers={'x-big': 'a' * 20_000})  # whole, but over 16 kB
    _json_error(r.status_code, r.json(), 431)
    assert client.get('/health').status_code == 200


def test_no_docs_no_server_version(server):
    _, client = server
    r = client.get('/health')
    assert 'server' not in r.headers, r.headers
    for path in ('/docs', '/openapi.json', '/redoc'):
        assert client.get(path).status_code == 404


def test_docs_flag(model_dir):
    from bigmodel_book.lifecycle.serve import create_app

    async def get(app, path):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url='http://t') as c:
            return await c.get(path)

    on = asyncio.run(get(create_app(model_dir[1], docs=True), '/openapi.json'))
    assert on.status_code == 200 and torch.__version__ not in on.text
    off = asyncio.run(get(create_app(model_dir[1]), '/openapi.json'))
    assert off.status_code == 404


def test_mixed_load_never_500(server):
    "Good requests at concurrency 16 beside a stream of hostile ones: all good ones 200, no 5xx."
    s, _ = server
    bad = [
        b'{"inputs": ' + b'[' * 50_000 + b']' * 50_000 + b'}',
        b'{"inputs": [[' + b'9' * 5000 + b']]}',
        json.dumps({'inputs': [[True] + [0.5] * 63]}).encode(),
        bytes(range(256)),
        b'{"inputs": [[1, 2',
    ]
    good = json.dumps(GOOD).encode()
    statuses = {'good': [], 'bad': []}

    async def go():
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
            sem = asyncio.Semaphore(16)

            async def one(kind, body):
                async with sem:
                    r = await c.post('/predict', content=body, headers=J)
                    statuses[kind].append(r.status_code)

            jobs = [one('good', good) for _ in range(150)]
            jobs += [one('bad', bad[i % len(bad)]) for i in range(100)]
            await asyncio.wait_for(asyncio.gather(*jobs), 60)

    asyncio.run(go())
    assert statuses['good'] == [200] * 150
    assert len(statuses['bad']) == 100 and all(400 <= x < 500 for x in statuses['bad'])


def test_fuzzed_bodies_never_500(server):
    "Truncated and bit-flipped good bodies (seeded): 200 or a 4xx JSON error, never a 5xx."
    _, client = server
    rng = np.random.default_rng(0)
    good = bytearray(json.dumps(GOOD).encode())
    for i in range(150):
        b = bytearray(good)
        if i % 3 == 0:
            b = b[: rng.integers(0, len(b))]
        for _ in range(rng.integers(1, 6)):
            b[rng.integers(0, len(b) or 1) % max(len(b), 1)] = int(rng.integers(0, 256))
        r = client.post('/predict', content=bytes(b), headers=J)
        assert r.status_code == 200 or 400 <= r.status_code < 500, (i, r.status_code, r.text)
        if r.status_code != 200:
            assert set(r.json()) == {'error', 'detail'}


def test_header_timeout(guarded):
    status, body, took = _trickle(guarded.url, b'POST /predict HTTP/1.1\r\nhost: x\r\nx-slow: ')
    _json_error(status, body, 408)
    assert took < 4, took
    # connections that never finish their headers are all closed
    socks = [socket.create_connection(_addr(guarded.url), timeout=10) for _ in range(8)]
    try:
        for s in socks:
            s.sendall(b'GET /health HTTP/1.1\r\nhost: x\r\n')
        t0 = time.monotonic()
        for s in socks:
            answer = b''
            while chunk := s.recv(65536):
                answer += chunk
            assert _parse(answer)[0] == 408
        assert time.monotonic() - t0 < 5
    finally:
        for s in socks:
            s.close()


def test_body_timeout(guarded):
    head = (
        b'POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n'
        b'authorization: Bearer ' + TOKEN.encode() + b'\r\ncontent-length: 10000\r\n\r\n'
    )
    status, body, took = _trickle(guarded.url, head)
    _json_error(status, body, 408)
    assert 1.5 < took < 5, took


def test_connection_limit(guarded):
    socks = [socket.create_connection(_addr(guarded.url), timeout=10) for _ in range(16)]
    try:
        time.sleep(0.3)
        refused = 0
        for s in socks:
            if select.select([s], [], [], 0)[0]:
                answer = s.recv(65536)
                status, _, body = _parse(answer)
                _json_error(status, body, 503)
                refused += 1
        assert refused >= 4, refused
    finally:
        for s in socks:
            s.close()
    time.sleep(1.5)  # the others end at the header timeout
    assert httpx.get(guarded.url + '/health', timeout=10).status_code == 200


def test_token(guarded):
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        assert c.get('/health').status_code == 200  # open
        for headers in ({}, {'authorization': 'Bearer wrong'}, {'authorization': TOKEN}):
            r = c.post('/predict', json=GOOD, headers=headers)
            _json_error(r.status_code, r.json(), 401)
            assert r.headers['www-authenticate'] == 'Bearer'
        assert c.get('/metadata').status_code == 401
        ok = c.post('/predict', json=GOOD, headers={'authorization': f'Bearer {TOKEN}'})
        assert ok.status_code == 200 and len(ok.json()['predictions']) == 2
        assert c.get('/metadata', headers={'authorization': f'Bearer {TOKEN}'}).json()[
            'token_required'
        ]


def test_rate_limit(model_dir):
    with start_server(model_dir[1], timeout=300, args=['--rate', '4', '--burst', '5']) as s:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            codes = [c.get('/metadata').status_code for _ in range(12)]
            assert codes[:5] == [200] * 5 and codes.count(429) >= 6, codes
            r = c.post('/predict', json=GOOD)
            _json_error(r.status_code, r.json(), 429)
            assert int(r.headers['retry-after']) >= 1
            assert all(c.get('/health').status_code == 200 for _ in range(10))  # not limited
            time.sleep(0.6)  # 4/s: two tokens back
            assert c.post('/predict', json=GOOD).status_code == 200


def test_token_bucket_unit():
    b = TokenBucket(rate=2.0, burst=3)
    assert [b.take('a', now=0.0) for _ in range(3)] == [0.0] * 3
    assert b.take('a', now=0.0) == pytest.approx(0.5)
    assert b.take('b', now=0.0) == 0.0  # per client
    assert b.take('a', now=0.5) == 0.0 and b.take('a', now=0.5) > 0
    small = TokenBucket(rate=1.0, burst=1, max_clients=4)
    for i in range(20):
        small.take(str(i), now=float(i))
    assert len(small.buckets) <= 4


def test_limits_token_and_json_units(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match='body_timeout'):
        ServeLimits(body_timeout=0).check()
    with pytest.raises(ValueError, match='rate'):
        ServeLimits(rate=-1).check()
    assert ServeLimits(rate=0).check().rate == 0
    monkeypatch.delenv('BMB_SERVE_TOKEN', raising=False)
    assert read_token() is None
    monkeypatch.setenv('BMB_SERVE_TOKEN', ' abc ')
    assert read_token() == 'abc'
    f = tmp_path / 't'
    f.write_text('from-file\nsecond line\n')
    assert read_token(f) == 'from-file'
    f.write_text('\n')
    with pytest.raises(ValueError, match='empty'):
        read_token(f)
    with pytest.raises(ValueError, match='does not exist'):
        read_token(tmp_path / 'missing')
    for body, status in [(b'[' * 100_000, 400), (b'1' * 200, 422), (b'\xff', 400), (b'', 400)]:
        with pytest.raises(RequestError) as e:
            parse_json_body(body)
        assert e.value.status == status, body[:10]
    assert parse_json_body(b'{"inputs": [[1, 2.5]]}') == {'inputs': [[1, 2.5]]}


def test_warning_without_token_off_loopback(model_dir, monkeypatch, capsys):
    "Binding beyond loopback without a token warns (uvicorn's run is stubbed: nothing binds)."
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, 'run', lambda self: None)
    serve_model_dir(model_dir[1], host='0.0.0.0', port=8123)
    assert 'without a token' in capsys.readouterr().err
    serve_model_dir(model_dir[1], host='0.0.0.0', port=8123, token='x')
    serve_model_dir(model_dir[1], host='127.0.0.1', port=8123)
    assert 'without a token' not in capsys.readouterr().err


def test_serve_help_states_limits(capsys):
    from bigmodel_book.cli.core import main

    with pytest.raises(SystemExit):
        main(['serve', '--help'])
    out = capsys.readouterr().out
    for word in (
        '--header-timeout',
        '--body-timeout',
        '--keep-alive',
        '--max-connections',
        '--max-header',
        '--rate',
        '--burst',
        '--token-file',
        'BMB_SERVE_TOKEN',
        '--docs',
        '408',
        '413',
        '429',
        '431',
        '(default: 10.0)',
        '(default: 256)',
    ):
        assert word in out, word


# --- dynamic batching (8.9) ---------------------------------------------------------------


def test_batcher_returns_each_request_its_rows():
    "Property: random request sizes in random arrival orders each get exactly their own rows."
    from bigmodel_book.lifecycle.batching import BatchPolicy, DynamicBatcher

    async def trial(seed):
        rng = np.random.default_rng(seed)
        rows, wait = int(rng.integers(1, 12)), float(rng.uniform(0, 2))
        policy = BatchPolicy(max_rows=rows, max_wait_ms=wait)
        batcher = DynamicBatcher(lambda x: x * 3.0 + 1.0, policy)
        reqs = [rng.normal(size=(int(rng.integers(1, 8)), 2)) for _ in range(30)]

        async def one(x):
            await asyncio.sleep(float(rng.uniform(0, 0.003)))
            return await batcher.submit(x)

        outs = await asyncio.gather(*(one(x) for x in reqs))
        assert all(np.array_equal(o, x * 3.0 + 1.0) for o, x in zip(outs, reqs))
        return batcher.batches

    for seed in range(8):
        asyncio.run(asyncio.wait_for(trial(seed), 10))


def test_batcher_queue_bound_and_retry_after():
    "A full queue refuses at once with 503 and Retry-After; queued inputs never exceed the bound."
    import threading

    from bigmodel_book.lifecycle.batching import BatchPolicy, DynamicBatcher, QueueFull

    gate = threading.Event()

    def slow(x):
        gate.wait(5)
        return x

    async def scenario():
        batcher = DynamicBatcher(slow, BatchPolicy(max_rows=2, max_wait_ms=0, max_queue=4))
        tasks = [asyncio.create_task(batcher.submit(np.ones((1, 1)) * i)) for i in range(12)]
        await asyncio.sleep(0.2)
        peak = batcher.queued
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return peak, results

    t = time.monotonic()
    peak, results = asyncio.run(asyncio.wait_for(scenario(), 10))
    refused = [r for r in results if isinstance(r, QueueFull)]
    assert time.monotonic() - t < 8 and peak <= 4 and refused
    assert all(r.status == 503 and r.headers['retry-after'].isdigit() for r in refused)
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert len(served) + len(refused) == 12 and len(served) >= 4
    with pytest.raises(ValueError, match='max_rows >= 1'):
        BatchPolicy(max_rows=0).check()


def test_batched_server_equals_unbatched_and_sheds_load(server, model_dir):
    "Over HTTP: batched answers equal the per-request server's; a full queue answers 503 quickly."
    s, client = server
    rng = np.random.default_rng(0)
    bodies = [json.dumps({'inputs': rng.random((1, 64)).tolist()}).encode() for _ in range(24)]
    want = [client.post('/predict', content=b, headers=J).json() for b in bodies]

    async def burst(url, bodies):
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            return await asyncio.gather(*(c.post('/predict', content=b, headers=J) for b in bodies))

    args = ['--dynamic-batch', '8', '--batch-wait-ms', '5']
    with start_server(model_dir[1], timeout=300, args=args) as batched:
        got = asyncio.run(burst(batched.url, bodies))
    assert all(r.status_code == 200 for r in got)
    for g, w in zip(got, want):
        g = g.json()
        assert g['predictions'] == w['predictions']
        assert np.allclose(g['probabilities'], w['probabilities'], atol=1e-6)
    args = ['--dynamic-batch', '2', '--batch-wait-ms', '200', '--queue-size', '2']
    with start_server(model_dir[1], timeout=300, args=args) as small:
        t = time.monotonic()
        rs = asyncio.run(burst(small.url, bodies))
        took = time.monotonic() - t
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes and took < 20
    full = next(r for r in rs if r.status_code == 503)
    assert full.headers['retry-after'].isdigit() and full.json()['error'] == 'queue full'


def test_onnxruntime_backend(tmp_path):
    "--backend onnxruntime answers as torch does; a directory without model.onnx is refused."
    from bigmodel_book.lifecycle.serve import create_app

    torch.manual_seed(0)
    model = mlp(n_hidden=16).eval()
    kw = dict(builder='bigmodel_book.train.learner:mlp', kwargs={'n_hidden': 16}, input_shape=[64])
    d = save_model_dir(model, tmp_path / 'onnx', formats=('onnx',), **kw)

    async def post(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url='http://t') as c:
            return (await c.post('/predict', json=GOOD)).json()

    ort = asyncio.run(post(create_app(d, backend='onnxruntime')))
    eager = asyncio.run(post(create_app(d)))
    assert ort['predictions'] == eager['predictions']
    assert np.allclose(ort['probabilities'], eager['probabilities'], atol=1e-5)
    bare = save_model_dir(model, tmp_path / 'bare', formats=(), **kw)
    with pytest.raises(ValueError, match='no model.onnx'):
        create_app(bare, backend='onnxruntime')
    with pytest.raises(ValueError, match='backend must be one of'):
        create_app(bare, backend='tensorrt')
