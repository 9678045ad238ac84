"""`make gpu-check`: run the GPU notebook cells, tests and benchmarks on a CUDA machine.

Every `gpu`-flagged notebook cell, every `gpu`-marked test and the GPU benchmarks run in one go,
then one summary is printed (passed, failed, throughput figures).

With BMB_REQUIRE_GPU=1 set here, a cell or test that would skip for lack of CUDA fails instead, so
a green summary means the GPU paths really ran. Notebooks run at quick scale; benchmarks with
`--device cuda`.

usage: python tools/gpu_check.py [--skip-notebooks] [--skip-tests] [--skip-benchmarks]
                                 [--budget 480]
"""

from __future__ import annotations

import argparse, json, os, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    'BMB_QUICK': '1',
    'BMB_PROGRESS': '0',
    'BMB_REQUIRE_GPU': '1',
    'MPLBACKEND': 'Agg',
}


def gpu_notebooks() -> list[Path]:
    "Notebooks with at least one `#| gpu` cell."
    return sorted(
        p
        for p in (ROOT / 'nbs').glob('*.ipynb')
        if re.search(r'#\|\s*gpu\b', p.read_text(encoding='utf-8'))
    )


def step(name: str, cmd: list[str], timeout: float) -> dict:
    t = time.perf_counter()
    try:
        r = subprocess.run(
            cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=max(30, timeout)
        )
        ok, tail = r.returncode == 0, (r.stdout + r.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        ok, tail = False, 'timed out'
    res = dict(step=name, ok=ok, seconds=round(time.perf_counter() - t, 1))
    print(f"[{'PASS' if ok else 'FAIL'}] {name} ({res['seconds']}s)", flush=True)
    if not ok:
        print('    ' + tail.replace('\n', '\n    '), flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--skip-notebooks', action='store_true')
    ap.add_argument('--skip-tests', action='store_true')
    ap.add_argument('--skip-benchmarks', action='store_true')
    ap.add_argument('--budget', type=float, default=480)
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print('gpu-check needs a CUDA GPU; none is available here.')
        return 1
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    start, results = time.perf_counter(), []
    left = lambda: args.budget - (time.perf_counter() - start)
    if not args.skip_notebooks:
        for nb in gpu_notebooks():
            results.append(
                step(
                    f'notebook {nb.name}',
                    [str(BIN / 'nbdev-test'), str(nb), '--flags', 'gpu'],
                    left(),
                )
            )
    if not args.skip_tests:
        results.append(
            step(
                'pytest -m gpu',
                [sys.executable, '-m', 'pytest', '-q', '-m', 'gpu', '-p', 'no:cacheprovider'],
                left(),
            )
        )
    if not args.skip_benchmarks:
        for b in sorted((ROOT / 'benchmarks').glob('[!_]*.py')):
            results.append(
                step(f'benchmark {b.name}', [sys.executable, str(b), '--device', 'cuda'], left())
            )
    figures = {}
    for f in (
        sorted((ROOT / 'benchmarks' / 'out').glob('*cuda*.json'))
        if (ROOT / 'benchmarks' / 'out').exists()
        else []
    ):
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        figures[f.stem] = {
            k: v for k, v in doc.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    passed, failed = sum(r['ok'] for r in results), sum(not r['ok'] for r in results)
    print(
        f"\ngpu-check summary: {passed} passed, {failed} failed"
        f" in {time.perf_counter() - start:.0f}s"
    )
    for name, vals in figures.items():
        print(f"  {name}: " + ', '.join(f"{k}={v:.4g}" for k, v in vals.items()))
    (ROOT / 'benchmarks' / 'out').mkdir(parents=True, exist_ok=True)
    (ROOT / 'benchmarks' / 'out' / 'gpu_check.json').write_text(
        json.dumps(dict(results=results, figures=figures), indent=1)
    )
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
