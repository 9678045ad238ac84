"""Latency and size of LeNet-5 as ExecuTorch programs (XNNPACK, float32 and int8) against eager
PyTorch (baseline) and ONNX Runtime, in one process, one thread each.

Usage: python benchmarks/edge_latency.py [--repeats N] [--batch B] [--threads T]
Writes benchmarks/out/edge_latency.json. Weights are random (latency and size do not depend on
training); int8 is calibrated on random images. Every runtime is timed round-robin on the same
inputs, and the median per call is reported with its ratio to eager PyTorch."""

import argparse, json, platform, sys, tempfile
from pathlib import Path

import torch

from bigmodel_book.lifecycle.edge import (
    EdgeModel,
    median_latency_ms,
    quantize_int8_pt2e,
    set_executorch_threads,
    to_executorch,
)
from bigmodel_book.lifecycle.export import export_onnx
from bigmodel_book.vision.models import LeNet5


def runners_for(model, batch: int, work: Path, threads: int) -> tuple[dict, dict]:
    "Functions of no argument running one batch in each runtime, and each one's file size."
    import onnxruntime as ort

    x = torch.rand(batch, 1, 28, 28)
    calib = [torch.rand(64, 1, 28, 28) for _ in range(4)]
    fp32 = EdgeModel(to_executorch(model, x, work / f'fp32_{batch}.pte'))
    qmodel = quantize_int8_pt2e(model, x, calib)
    int8 = EdgeModel(to_executorch(qmodel, x, work / f'int8_{batch}.pte'))
    export_onnx(model, x, work / 'lenet.onnx')
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(work / 'lenet.onnx'), opts, providers=['CPUExecutionProvider'])
    xnp = x.numpy()
    runners = {
        'eager_fp32': lambda: model(x),
        'onnxruntime_fp32': lambda: sess.run(None, {'input': xnp}),
        'executorch_xnnpack_fp32': lambda: fp32(x),
        'executorch_xnnpack_int8': lambda: int8(x),
    }
    sizes = {
        'onnxruntime_fp32': (work / 'lenet.onnx').stat().st_size,
        'executorch_xnnpack_fp32': fp32.nbytes,
        'executorch_xnnpack_int8': int8.nbytes,
    }
    return runners, sizes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--repeats', type=int, default=500, help='timed calls per runtime and batch')
    p.add_argument('--batch', type=int, default=32, help='the larger batch (besides batch 1)')
    p.add_argument('--threads', type=int, default=1, help='threads of every runtime')
    p.add_argument(
        '--out',
        type=Path,
        default=Path(__file__).resolve().parent / 'out' / 'edge_latency.json',
        help='JSON file to write',
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    set_executorch_threads(args.threads)
    model = LeNet5(n_classes=10).eval()
    res = {}
    with tempfile.TemporaryDirectory() as d, torch.inference_mode():
        for batch in (1, args.batch):
            runners, sizes = runners_for(model, batch, Path(d), args.threads)
            lat = median_latency_ms(runners, repeats=args.repeats)
            res[f'batch{batch}'] = {
                k: dict(
                    latency_ms=v,
                    latency_ratio_vs_eager=v / lat['eager_fp32'],
                    file_bytes=sizes.get(k),
                )
                for k, v in lat.items()
            }
    doc = dict(
        benchmark='edge_latency',
        python=sys.version.split()[0],
        torch=torch.__version__,
        machine=platform.machine(),
        processor=platform.processor(),
        threads=args.threads,
        repeats=args.repeats,
        results=res,
    )
    print(json.dumps(res, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == '__main__':
    main()
