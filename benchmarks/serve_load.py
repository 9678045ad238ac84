"""Load test of `bigmodel-book serve`: the real uvicorn server in a second process on 127.0.0.1,
loaded from this process. Three parts, each bounded in requests and seconds:

1. clean: 2,000 /predict requests at concurrency 32; zero failures, p50/p99 latency and throughput,
   against calling the model directly (baseline);
2. hostile: the same good traffic beside a parallel stream of bad requests (JSON nested 50,000
   deep, 5,000-digit integers, booleans among numbers, garbage, bodies and headers over the
   limits): zero failed good requests, zero 5xx answers, every bad one a 4xx JSON error;
3. guarded: a server with a token and a rate limit: the 401 and 429 counts against the counts the
   token bucket predicts;
4. batching: the per-request server (baseline) against `--dynamic-batch 32` (torch, and ONNX
   Runtime) at concurrency 1, 8, 32 and 64 in the same run: throughput and p50/p99 as ratios.

    python benchmarks/serve_load.py [--requests 2000] [--concurrency 32] [--batch 1] \
        [--device cpu|cuda] [--seconds 15]

Writes benchmarks/out/serve_load.json. Loopback only: the servers listen on 127.0.0.1 and are
stopped at the end."""

import argparse, asyncio, json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

from bigmodel_book.lifecycle.export import save_model_dir
from bigmodel_book.lifecycle.serve import start_server
from bigmodel_book.vision.models import LeNet5

J = {'content-type': 'application/json'}


def _limits(concurrency):
    import httpx

    # keep-alive expiry 2 s < uvicorn's 5 s (avoids the close race)
    return httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )


async def _client(url, payloads, concurrency, timeout=60.0, deadline=None):
    """Like bigmodel_book.lifecycle.serve.load_test, but records why requests failed and stops
    starting new ones after `deadline` (time.monotonic())."""
    import httpx

    lat, errors, sem = [], {}, asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout, limits=_limits(concurrency)
    ) as client:

        async def one(p):
            async with sem:
                if deadline and time.monotonic() > deadline:
                    return
                t = time.perf_counter()
                try:
                    r = await client.post('/predict', content=p, headers=J)
                    why = None if r.status_code == 200 else f'status {r.status_code}'
                except httpx.HTTPError as e:
                    why = type(e).__name__
                lat.append(time.perf_counter() - t)
                if why:
                    errors[why] = errors.get(why, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        return np.array(lat) * 1e3, errors, time.perf_counter() - t0


def _summary(ms, errors, wall, concurrency, batch):
    return dict(
        requests=len(ms),
        concurrency=concurrency,
        batch=batch,
        failures=sum(errors.values()),
        failure_kinds=errors,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        max_ms=float(ms.max()),
        throughput_rps=len(ms) / wall,
        wall_s=wall,
    )


def _payloads(images, n, batch):
    return [
        json.dumps(
            {'inputs': [images[(i * batch + j) % len(images)] for j in range(batch)]}
        ).encode()
        for i in range(n)
    ]


def load(url, images, n, concurrency, batch, seconds=None):
    deadline = time.monotonic() + seconds if seconds else None
    ms, errors, wall = asyncio.run(
        _client(url, _payloads(images, n, batch), concurrency, deadline=deadline)
    )
    return _summary(ms, errors, wall, concurrency, batch)


def bad_requests(image) -> dict:
    "Each kind of hostile request: (body, extra headers)."
    deep = 50_000
    return {
        'nested 50,000 deep': (b'{"inputs": ' + b'[' * deep + b']' * deep + b'}', {}),
        '5,000-digit integer': (b'{"inputs": [' + b'9' * 5000 + b']}', {}),
        'booleans among numbers': (
            json.dumps({'inputs': [[[[True] + row[1:] for row in image[0]]]]}).encode(),
            {},
        ),
        'garbage bytes': (bytes(range(256)) * 8, {}),
        'malformed JSON': (b'{"inputs": [[1, 2', {}),
        'body over limit': (b'{"inputs": [' + b'0.0,' * 600_000 + b'0.0]}', {}),
        'header over limit': (json.dumps({'inputs': [image]}).encode(), {'x-big': 'a' * 100_000}),
        'NaN': (b'{"inputs": [[[' + b'NaN, ' * 27 + b'NaN]]]}', {}),
        'extra field': (json.dumps({'inputs': [image], 'debug': 1}).encode(), {}),
    }


async def _hostile(url, bad, deadline, concurrency=4):
    "Send the bad requests round robin until `deadline`; status counts per kind."
    import httpx

    counts = {k: {} for k in bad}
    kinds = list(bad)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=_limits(concurrency)) as client:

        async def worker(w):
            i = w
            while time.monotonic() < deadline:
                kind = kinds[i % len(kinds)]
                body, headers = bad[kind]
                try:
                    r = await client.post('/predict', content=body, headers=J | headers)
                    key = str(r.status_code)
                    if r.status_code >= 400 and set(r.json()) != {'error', 'detail'}:
                        key += ' (not a JSON error)'
                except (httpx.HTTPError, ValueError) as e:
                    key = type(e).__name__
                counts[kind][key] = counts[kind].get(key, 0) + 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return counts


def hostile(url, images, args):
    "Good traffic at `args.concurrency` with a parallel stream of bad requests, both time-bounded."
    deadline = time.monotonic() + args.seconds

    async def both():
        good = asyncio.create_task(
            _client(
                url,
                _payloads(images, args.requests, args.batch),
                args.concurrency,
                deadline=deadline,
            )
        )
        bad = await _hostile(url, bad_requests(images[0]), deadline)
        return await good, bad

    (ms, errors, wall), bad = asyncio.run(both())
    res = _summary(ms, errors, wall, args.concurrency, args.batch)
    n_bad = sum(sum(c.values()) for c in bad.values())
    all_codes = [k for c in bad.values() for k in c]
    res.update(
        bad_requests=n_bad,
        bad_by_kind=bad,
        bad_5xx=sum(v for c in bad.values() for k, v in c.items() if k.startswith('5')),
        bad_all_4xx_json=all(k.startswith('4') and k.isdigit() for k in all_codes),
    )
    return res


def guarded(mdir, images, device, rate=20.0, burst=10, seconds=4.0):
    """A server with a token and `rate`/`burst`: first requests without the token, then a
    sustained load with it; measured 401/429/200 counts against the token bucket's."""
    import httpx

    token = 'bench-token-' + '0' * 20
    with tempfile.TemporaryDirectory() as d:
        tf = Path(d) / 'token'
        tf.write_text(token)
        args = ['--device', device, '--token-file', str(tf), '--rate', str(rate)]
        with start_server(mdir, timeout=300, args=args + ['--burst', str(burst)]) as server:
            body = json.dumps({'inputs': [images[0]]}).encode()
            with httpx.Client(base_url=server.url, timeout=30) as c:
                t0 = time.monotonic()
                no_token = [
                    c.post('/predict', content=body, headers=J).status_code for _ in range(40)
                ]
                took = time.monotonic() - t0
            time.sleep(burst / rate + 0.2)  # the bucket refills
            auth = J | {'authorization': f'Bearer {token}'}

            async def sustained():
                codes, retry = [], []
                end = time.monotonic() + seconds
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:

                    async def worker():
                        while time.monotonic() < end:
                            r = await c.post('/predict', content=body, headers=auth)
                            codes.append(r.status_code)
                            if r.status_code == 429:
                                retry.append(r.headers.get('retry-after'))
                            if r.status_code == 429:
                                await asyncio.sleep(0.01)

                    t = time.monotonic()
                    await asyncio.gather(*(worker() for _ in range(8)))
                    return codes, retry, time.monotonic() - t

            codes, retry, wall = asyncio.run(sustained())
    expect_401 = burst + int(rate * took)
    return dict(
        rate=rate,
        burst=burst,
        without_token=dict(
            requests=len(no_token),
            seconds=took,
            n_401=no_token.count(401),
            n_429=no_token.count(429),
            expected_401_at_most=expect_401,
            other=len(no_token) - no_token.count(401) - no_token.count(429),
        ),
        with_token=dict(
            requests=len(codes),
            seconds=wall,
            n_200=codes.count(200),
            n_429=codes.count(429),
            expected_200_about=burst + rate * wall,
            other=len(codes) - codes.count(200) - codes.count(429),
            all_429_with_retry_after=all(r and r.isdigit() for r in retry),
        ),
    )


def batching(mdir, images, device, args, levels=(1, 8, 32, 64)) -> dict:
    "Per-request against dynamically batched servers, one after the other, at each concurrency."
    modes = {
        'per_request': [],
        'batched_torch': ['--dynamic-batch', '32', '--batch-wait-ms', '2'],
    }
    if device == 'cpu':
        modes['batched_onnxruntime'] = modes['batched_torch'] + ['--backend', 'onnxruntime']
    res = {}
    for mode, extra in modes.items():
        with start_server(
            mdir, timeout=300, args=['--device', device, '--threads', '1', *extra]
        ) as s:
            load(s.url, images, 50, 4, 1)  # warm-up
            res[mode] = {
                f'c{c}': load(s.url, images, args.batching_requests, c, 1, args.seconds)
                for c in levels
            }
    for mode in res:
        for c, r in res[mode].items():
            base = res['per_request'][c]
            r['throughput_vs_per_request'] = r['throughput_rps'] / base['throughput_rps']
            r['p99_vs_per_request'] = r['p99_ms'] / base['p99_ms']
    return res


def direct_latency(model, images, n, device):
    """Per-call latency (ms) of the model called in this process on one image,
    as the server would (softmax, to list)."""
    times = []
    with torch.inference_mode():
        for i in range(n):
            x = torch.tensor(images[i % len(images)], device=device)[None]
            t = time.perf_counter()
            model(x).softmax(-1).cpu().tolist()
            times.append((time.perf_counter() - t) * 1e3)
    return np.array(times)


def run(device: str, args) -> dict:
    torch.manual_seed(0)
    model = LeNet5(n_classes=10).eval()
    images = torch.rand(256, 1, 28, 28).tolist()
    with tempfile.TemporaryDirectory() as d:
        mdir = save_model_dir(
            model,
            Path(d) / 'lenet5',
            kwargs={'n_classes': 10},
            input_shape=[1, 28, 28],
            formats=('onnx',),
        )
        with start_server(mdir, timeout=300, args=['--device', device, '--threads', '1']) as server:
            load(server.url, images, 50, 4, args.batch)  # warm-up
            res = load(
                server.url, images, args.requests, args.concurrency, args.batch, args.seconds
            )
            res['hostile'] = hostile(server.url, images, args)
            alive = __import__('httpx').get(server.url + '/health').status_code == 200
        res['guarded'] = guarded(mdir, images, device)
        res['batching'] = batching(mdir, images, device, args)
    torch.set_num_threads(1)
    model = model.to(device)
    direct = direct_latency(model, images, 500, device)
    res.update(
        device=device,
        server_alive_after=alive,
        direct_p50_ms=float(np.median(direct)),
        direct_p99_ms=float(np.percentile(direct, 99)),
        http_over_direct_p50=res['p50_ms'] / float(np.median(direct)),
    )
    return res


def ok(r: dict) -> bool:
    "Whether a device's results meet the goals: no failures, no 5xx, counts as the bucket says."
    h, g = r['hostile'], r['guarded']
    wt, nt = g['with_token'], g['without_token']
    batched = [x for mode in r['batching'].values() for x in mode.values()]
    return (
        r['failures'] == 0
        and all(x['failures'] == 0 for x in batched)
        and r['server_alive_after']
        and h['failures'] == 0
        and h['bad_5xx'] == 0
        and h['bad_all_4xx_json']
        and nt['other'] == 0
        and 0 < nt['n_401'] <= nt['expected_401_at_most']
        and nt['n_401'] + nt['n_429'] == nt['requests']
        and wt['other'] == 0
        and wt['all_429_with_retry_after']
        and abs(wt['n_200'] - wt['expected_200_about']) <= 0.25 * wt['expected_200_about'] + 2
    )


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--requests', type=int, default=2000)
    p.add_argument('--concurrency', type=int, default=32)
    p.add_argument('--batch', type=int, default=1, help='images per request')
    p.add_argument(
        '--batching-requests',
        type=int,
        default=1000,
        help='requests per concurrency level in the batching comparison',
    )
    p.add_argument(
        '--seconds', type=float, default=15.0, help='time bound of the clean and hostile parts'
    )
    p.add_argument(
        '--device', default='auto', help="'cpu', 'cuda', or 'auto' (CPU, plus CUDA when available)"
    )
    args = p.parse_args(argv)
    devices = (
        [args.device]
        if args.device != 'auto'
        else ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    )
    results = {d: run(d, args) for d in devices}
    for d, r in results.items():
        h, g = r['hostile'], r['guarded']
        print(
            f"[{d}] clean: {r['requests']} requests, concurrency {r['concurrency']}, "
            f"batch {r['batch']}: failures {r['failures']}, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"{r['throughput_rps']:.0f} requests/s; "
            f"direct call p50 {r['direct_p50_ms']:.3f} ms "
            f"(HTTP/direct ratio {r['http_over_direct_p50']:.1f}x)"
        )
        print(
            f"[{d}] hostile: {h['requests']} good requests, failures {h['failures']}, "
            f"p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms; beside {h['bad_requests']} bad "
            f"requests: {h['bad_5xx']} answered 5xx, all 4xx JSON: {h['bad_all_4xx_json']}"
        )
        for kind, counts in h['bad_by_kind'].items():
            print(f"    {kind}: {counts}")
        for mode, per_c in r['batching'].items():
            print(
                f"[{d}] {mode}: "
                + '; '.join(
                    f"{c}: {x['throughput_rps']:.0f}/s ({x['throughput_vs_per_request']:.2f}x), "
                    f"p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms "
                    f"({x['p99_vs_per_request']:.2f}x), failures {x['failures']}"
                    for c, x in per_c.items()
                )
            )
        nt, wt = g['without_token'], g['with_token']
        print(
            f"[{d}] guarded (rate {g['rate']:g}/s, burst {g['burst']}): without token "
            f"{nt['requests']} in {nt['seconds']:.2f} s -> {nt['n_401']} x 401 "
            f"(at most {nt['expected_401_at_most']} expected), {nt['n_429']} x 429; with token "
            f"{wt['requests']} in {wt['seconds']:.1f} s -> {wt['n_200']} x 200 "
            f"(about {wt['expected_200_about']:.0f} expected), {wt['n_429']} x 429"
        )
    out = Path(__file__).resolve().parent / 'out'
    out.mkdir(exist_ok=True)
    doc = {
        'benchmark': 'serve_load',
        'model': 'LeNet-5 (random weights), one model thread',
        'torch': torch.__version__,
        'recorded': time.strftime('%Y-%m-%d %H:%M'),
        'results': results,
    }
    (out / 'serve_load.json').write_text(json.dumps(doc, indent=1))
    good = all(ok(r) for r in results.values())
    print(
        'OK: zero failed good requests, zero 5xx, expected 401/429'
        if good
        else 'FAILED: see the JSON'
    )
    return 0 if good else 1


if __name__ == '__main__':
    sys.exit(main())
