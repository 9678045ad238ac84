"""Speech benchmark: log-mel features from the formulas (5.1) vs torchaudio, and keyword / CTC
inference real-time factors vs the MFCC + logistic-regression baseline, in one process
(interleaved repeats, median). Writes benchmarks/out/speech_features.json.

    python benchmarks/speech_features.py [--device cuda] [--repeats 7]
"""

import argparse, json, statistics, time
from pathlib import Path

import numpy as np
import torch
import torchaudio
from sklearn.linear_model import LogisticRegression

from bigmodel_book.speech.data import mel_filterbank, stft_power
from bigmodel_book.speech.kws import KeywordCNN, mfcc_stats
from bigmodel_book.speech.ctc import CTCRecogniser, transcribe


def timed(fn, device):
    if device.type == 'cuda':
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - t


def bench(device: torch.device, repeats: int, batch: int = 64) -> dict:
    torch.manual_seed(0)
    x = (0.1 * torch.randn(batch, 16000)).to(device)
    fb = mel_filterbank(201, 40).to(device)
    ta = torchaudio.transforms.MelSpectrogram(
        16000, n_fft=400, hop_length=160, n_mels=40, mel_scale='htk'
    ).to(device)
    ours = lambda: torch.log(stft_power(x).transpose(-1, -2) @ fb + 1e-6)
    theirs = lambda: torch.log(ta(x) + 1e-6)
    kws = KeywordCNN().to(device).eval()
    base = LogisticRegression(max_iter=200).fit(
        np.random.default_rng(0).normal(size=(42, 26)), np.arange(42) % 21
    )
    clip = x[:1]

    def cnn_clip():
        with torch.no_grad():
            kws(clip)

    def base_clip():
        base.predict(mfcc_stats(clip.cpu()))

    ctc = CTCRecogniser().to(device).eval()
    long = (0.1 * torch.randn(10 * 16000)).to(device)
    times = {
        k: []
        for k in (
            'logmel_ours',
            'logmel_torchaudio',
            'kws_cnn_1s_clip',
            'kws_baseline_1s_clip',
            'ctc_10s',
        )
    }
    for fn in (ours, theirs, cnn_clip, base_clip):
        fn()  # warm-up
    for _ in range(repeats):  # interleaved
        times['logmel_ours'].append(timed(ours, device))
        times['logmel_torchaudio'].append(timed(theirs, device))
        times['kws_cnn_1s_clip'].append(timed(cnn_clip, device))
        times['kws_baseline_1s_clip'].append(timed(base_clip, device))
        times['ctc_10s'].append(timed(lambda: transcribe(ctc, long, max_s=5.0), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        'device': str(device),
        'batch': batch,
        'median_s': med,
        'logmel_clips_per_s': {
            'ours': batch / med['logmel_ours'],
            'torchaudio': batch / med['logmel_torchaudio'],
        },
        'logmel_ratio_ours_over_torchaudio': med['logmel_ours'] / med['logmel_torchaudio'],
        'rtf': {
            'kws_cnn': med['kws_cnn_1s_clip'],
            'kws_mfcc_logreg_baseline': med['kws_baseline_1s_clip'],
            'ctc_bigru': med['ctc_10s'] / 10,
        },
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        '--device',
        default='cpu',
        help="'cpu' or 'cuda' (CUDA also runs automatically when available)",
    )
    p.add_argument('--repeats', type=int, default=7)
    args = p.parse_args()
    devices = [torch.device(args.device)]
    if torch.cuda.is_available() and args.device == 'cpu':
        devices.append(torch.device('cuda'))
    res = {}
    for d in devices:
        r = bench(d, args.repeats)
        res[str(d)] = r
        print(
            f"[{d}] log-mel ours/torchaudio time ratio "
            f"{r['logmel_ratio_ours_over_torchaudio']:.2f} "
            f"({r['logmel_clips_per_s']['ours']:.0f} vs "
            f"{r['logmel_clips_per_s']['torchaudio']:.0f} clips/s); "
            f"RTF kws CNN {r['rtf']['kws_cnn']:.4f}, "
            f"MFCC+logreg baseline {r['rtf']['kws_mfcc_logreg_baseline']:.4f}, "
            f"CTC {r['rtf']['ctc_bigru']:.4f}"
        )
    out = Path(__file__).parent / 'out'
    out.mkdir(exist_ok=True)
    (out / 'speech_features.json').write_text(json.dumps(res, indent=1))


if __name__ == '__main__':
    main()
