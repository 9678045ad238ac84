"""Load test of `bigmodel-book serve`: the real uvicorn server in a second process on 127.0.0.1,
2,000 /predict requests at concurrency 16 from this process; zero failures, p50/p99 latency and
throughput, against calling the model directly (baseline).

    python benchmarks/serve_load.py [--requests 2000] [--concurrency 16] [--batch 1] \
        [--device cpu|cuda]

Writes benchmarks/out/serve_load.json. Loopback only: the server listens on 127.0.0.1 and is
stopped at the end."""

import argparse, asyncio, json, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

from bigmodel_book.lifecycle.export import save_model_dir
from bigmodel_book.lifecycle.serve import start_server
from bigmodel_book.vision.models import LeNet5


async def _client(url, payloads, concurrency, timeout=60.0):
    """Like bigmodel_book.lifecycle.serve.load_test, but records why requests failed;
    keep-alive expiry 2 s < uvicorn's 5 s (avoids the close race)."""
    import httpx

    lat, errors, sem = [], {}, asyncio.Semaphore(concurrency)
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(p):
            async with sem:
                t = time.perf_counter()
                try:
                    r = await client.post(
                        '/predict', content=p, headers={'content-type': 'application/json'}
                    )
                    why = None if r.status_code == 200 else f'status {r.status_code}'
                except httpx.HTTPError as e:
                    why = type(e).__name__
                lat.append(time.perf_counter() - t)
                if why:
                    errors[why] = errors.get(why, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in payloads))
        return np.array(lat) * 1e3, errors, time.perf_counter() - t0


def load(url, images, n, concurrency, batch):
    payloads = [
        json.dumps(
            {'inputs': [images[(i * batch + j) % len(images)] for j in range(batch)]}
        ).encode()
        for i in range(n)
    ]
    ms, errors, wall = asyncio.run(_client(url, payloads, concurrency))
    return dict(
        requests=n,
        concurrency=concurrency,
        batch=batch,
        failures=sum(errors.values()),
        failure_kinds=errors,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        max_ms=float(ms.max()),
        throughput_rps=n / wall,
        wall_s=wall,
    )


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
            model, Path(d) / 'lenet5', kwargs={'n_classes': 10}, input_shape=[1, 28, 28], formats=()
        )
        with start_server(mdir, timeout=300, args=['--device', device, '--threads', '1']) as server:
            load(server.url, images, 50, 4, args.batch)  # warm-up
            res = load(server.url, images, args.requests, args.concurrency, args.batch)
            alive = __import__('httpx').get(server.url + '/health').status_code == 200
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


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--requests', type=int, default=2000)
    p.add_argument('--concurrency', type=int, default=16)
    p.add_argument('--batch', type=int, default=1, help='images per request')
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
        print(
            f"[{d}] {r['requests']} requests, concurrency {r['concurrency']}, "
            f"batch {r['batch']}: failures {r['failures']}, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"{r['throughput_rps']:.0f} requests/s; "
            f"direct call p50 {r['direct_p50_ms']:.3f} ms "
            f"(HTTP/direct ratio {r['http_over_direct_p50']:.1f}x)"
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
    ok = all(r['failures'] == 0 and r['server_alive_after'] for r in results.values())
    print('OK: zero failed requests' if ok else 'FAILED requests: see the JSON')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
