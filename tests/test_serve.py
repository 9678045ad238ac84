"""Serving: the real uvicorn server on 127.0.0.1 in a subprocess, over HTTP; every bad request
is a 4xx JSON error and the server keeps answering."""

import json, math

import httpx, numpy as np, pytest, torch

from bigmodel_book.lifecycle.export import save_model_dir
from bigmodel_book.lifecycle.serve import (
    RequestError,
    load_test,
    parse_batch,
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
