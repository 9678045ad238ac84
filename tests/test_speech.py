"""Tests of the speech chapter (5.1-5.3): eSpeak NG loading, features against torchaudio,
augmentation, bad input, Speech Commands layout, models, CTC, the recipes and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from bigmodel_book.speech.data import (
    ACCENTS,
    ESpeak,
    WORDS,
    add_noise,
    center_clip,
    check_waveform,
    colored_noise,
    dct_matrix,
    espeak,
    load_audio,
    mel_filterbank,
    mfcc,
    resample,
    speech_commands,
    speed_perturb,
    stft_power,
    synth_words,
    voice_split,
    LogMel,
    SpecAugment,
)
from bigmodel_book.speech.kws import (
    HELD_OUT_ACCENTS,
    AugmentedClips,
    KWS_LABELS,
    KWSConfig,
    KeywordCNN,
    edit_distance,
    kws_data,
    noisy_test,
    stream_keywords,
    train_kws,
)
from bigmodel_book.speech.ctc import (
    CTCConfig,
    CTCDataset,
    CTCLearner,
    CTCRecogniser,
    ctc_collate,
    energy_segments,
    ctc_greedy_decode,
    error_rates,
    quiet_cuts,
    spell,
    train_ctc,
    transcribe,
    transcribe_file,
)
from bigmodel_book.data.core import DataLoaders


@pytest.fixture(scope='module')
def word():
    return center_clip(
        resample(
            torch.from_numpy(espeak().synth('seven', 'en-US+m3').astype(np.float32) / 32768), 22050
        )
    )


def test_espeak_synthesises_int16_at_22050():
    x = espeak().synth('yes', 'en-GB-scotland+f2', rate=180, pitch=60)
    assert x.dtype == np.int16 and espeak().sr == 22050 and len(x) > 2000


def test_espeak_missing_library_says_how_to_install():
    with pytest.raises(RuntimeError, match='pip install espeakng-loader'):
        ESpeak(lib_path='/nonexistent/libespeak-ng.so', data_path='/nonexistent')


def test_unknown_voice_and_empty_text():
    with pytest.raises(ValueError, match='no voice'):
        espeak().synth('yes', 'xx-nonexistent+zz')
    with pytest.raises(ValueError, match='empty'):
        espeak().synth('  ')


def test_voice_split_is_disjoint_and_used():
    vs = voice_split(0)
    assert not (set(vs['train']) & set(vs['test'])) and not (set(vs['valid']) & set(vs['test']))
    s = synth_words(1, 'test', words=['yes', 'no'])
    assert {v.split('+')[1] for v in s.voices} <= set(vs['test']) and s.labels == [0, 1]


def test_accents_held_out_of_training():
    "kws_data keeps HELD_OUT_ACCENTS out of train, valid and test; only 'test_accent' speaks them."
    d = kws_data(1, 1, 1)
    accents = lambda s: {v.split('+')[0] for v in s.voices}
    assert accents(d['test_accent_set']) <= set(HELD_OUT_ACCENTS)
    assert not accents(d['test_set']) & set(HELD_OUT_ACCENTS)
    variants = lambda s: [v.split('+')[1] for v in s.voices]
    assert variants(d['test_accent_set']) == variants(d['test_set'])  # same seed, same variants
    assert 'test_accent' not in kws_data(1, 1, 1, test_accents=())
    with pytest.raises(ValueError, match='proper subset'):
        kws_data(1, 1, 1, test_accents=ACCENTS)
    with pytest.raises(ValueError, match='proper subset'):
        kws_data(1, 1, 1, test_accents=['en-AU'])
    with pytest.raises(ValueError, match='subset of ACCENTS'):
        synth_words(1, 'test', accents=[])


@pytest.mark.parametrize('n_mels,n_fft', [(40, 400), (64, 512), (23, 256)])
def test_mel_filterbank_matches_torchaudio(n_mels, n_fft):
    ta = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, 0.0, 8000.0, n_mels, 16000, norm=None, mel_scale='htk'
    )
    assert torch.allclose(mel_filterbank(n_fft // 2 + 1, n_mels), ta, atol=1e-5)


def test_stft_and_mfcc_match_torchaudio(word):
    assert torch.allclose(
        stft_power(word),
        torchaudio.transforms.Spectrogram(400, hop_length=160)(word),
        rtol=1e-3,
        atol=1e-6,
    )
    ta = torchaudio.transforms.MFCC(
        16000, n_mfcc=13, melkwargs=dict(n_fft=400, hop_length=160, n_mels=40, mel_scale='htk')
    )
    assert torch.allclose(mfcc(word), ta(word), atol=1e-2)
    assert torch.allclose(
        dct_matrix(20, 40), torchaudio.functional.create_dct(20, 40, 'ortho'), atol=1e-6
    )


def test_add_noise_hits_the_snr(word):
    for snr in (0.0, 10.0, 25.0):
        noisy = add_noise(word, colored_noise(16000, 'pink', torch.Generator().manual_seed(0)), snr)
        got = 10 * torch.log10(word.pow(2).mean() / (noisy - word).pow(2).mean())
        assert abs(float(got) - snr) < 1e-3
    batch = noisy_test(torch.stack([word, word, word, torch.zeros(16000)]), 10.0)
    assert torch.equal(batch[3], torch.zeros(16000)) and not torch.equal(batch[0], word)


def test_speed_perturb_length(word):
    assert abs(len(speed_perturb(word, 0.9)) - 16000 / 0.9) < 3 and torch.equal(
        speed_perturb(word, 1.0), word
    )


def test_spec_augment_masks_only_in_training():
    x = torch.randn(4, 40, 101)
    sa = SpecAugment()
    assert torch.equal(sa.eval()(x), x) and sa.train()(x).shape == x.shape


def test_bad_audio_files(tmp_path, word):
    sf.write(tmp_path / 'ok48k.wav', resample(word, 16000, 48000).numpy(), 48000)
    assert load_audio(tmp_path / 'ok48k.wav').shape == (16000,)  # other rates are resampled
    sf.write(tmp_path / 'stereo.wav', torch.stack([word, word], 1).numpy(), 16000)
    sf.write(tmp_path / 'empty.wav', np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / 'clipped.wav', (5 * word).clamp(-1, 1).numpy(), 16000)
    (tmp_path / 'junk.wav').write_bytes(b'RIFF but not really')
    for name, msg in [
        ('stereo.wav', 'mono=True'),
        ('empty.wav', 'empty'),
        ('clipped.wav', 'clipped'),
        ('junk.wav', 'Cannot read'),
        ('nope.wav', 'does not exist'),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_audio(tmp_path / name)
    assert load_audio(tmp_path / 'stereo.wav', mono=True).shape == (16000,)


def test_bad_waveforms():
    with pytest.raises(ValueError, match='NaN'):
        check_waveform(torch.tensor([0.1, float('nan')]), 16000)
    with pytest.raises(ValueError, match='resample'):
        check_waveform(torch.full((100,), 0.1), 8000)
    with pytest.raises(ValueError, match='silent'):
        check_waveform(torch.zeros(100), 16000)
    with pytest.raises(ValueError, match=r'\[-1, 1\]'):
        check_waveform(torch.full((100,), 3.0), 16000)
    with pytest.raises(TypeError):
        check_waveform(torch.ones(10, dtype=torch.int64), 16000)
    with pytest.raises(ValueError, match='batch'):
        KeywordCNN()(torch.randn(16000))
    with pytest.raises(ValueError, match='frames'):
        CTCRecogniser()(torch.randn(2, 50, 13))


def _tiny_speech_commands(root: Path, word: torch.Tensor):
    base = root / 'SpeechCommands' / 'speech_commands_v0.02'
    files = []
    for label in ('yes', 'no', 'bed'):
        (base / label).mkdir(parents=True)
        for spk in ('aaaa1111', 'bbbb2222', 'cccc3333'):
            sf.write(base / label / f'{spk}_nohash_0.wav', word.numpy(), 16000, subtype='PCM_16')
            files.append(f'{label}/{spk}_nohash_0.wav')
    (base / '_background_noise_').mkdir()
    sf.write(
        base / '_background_noise_' / 'white_noise.wav',
        np.random.default_rng(0).uniform(-0.1, 0.1, 16000).astype(np.float32),
        16000,
    )
    (base / 'validation_list.txt').write_text('\n'.join(f for f in files if 'bbbb' in f) + '\n')
    (base / 'testing_list.txt').write_text('\n'.join(f for f in files if 'cccc' in f) + '\n')


def test_speech_commands_offline_layout(tmp_path, word):
    _tiny_speech_commands(tmp_path, word)
    tr = speech_commands('training', tmp_path)
    assert sorted(tr.texts) == ['no', 'yes'] and set(tr.voices) == {
        'aaaa1111'
    }  # 'bed' is not in the vocabulary
    te = speech_commands('testing', tmp_path)
    assert set(te.voices) == {'cccc3333'} and te.waves[0].shape == (16000,)
    d = kws_data(source='speech_commands', root=tmp_path)
    assert d['train'][0][0].shape == (16000,) and int(d['test'][1].max()) == len(
        WORDS
    )  # silence class added
    with pytest.raises(FileNotFoundError, match='download_data=True'):
        speech_commands('training', tmp_path / 'empty')


def test_augmented_clips_draw_afresh(word):
    ds = AugmentedClips([word[4000:12000], word[5000:11000]], [3, 7], n_background=2)
    assert len(ds) == 4 and [ds[i][1] for i in range(4)] == [3, 7, len(WORDS), len(WORDS)]
    torch.manual_seed(0)
    a = ds[0][0]
    torch.manual_seed(0)
    b = ds[0][0]
    assert (
        a.shape == (16000,) and torch.equal(a, b) and not torch.equal(a, ds[0][0])
    )  # seeded, and fresh at every read
    with pytest.raises(ValueError, match='labels'):
        AugmentedClips([word], [1, 2])
    with pytest.raises(ValueError, match='no clips'):
        AugmentedClips([], [])


def test_energy_segments():
    x = torch.cat(
        [
            torch.zeros(1600),
            torch.full((3200,), 0.5),
            torch.zeros(1600),
            torch.full((3200,), 0.5),
            torch.zeros(320),
            torch.full((3200,), 0.5),
        ]
    )
    assert energy_segments(x, min_gap=0.05) == [
        (1600, 4800),
        (6400, 13120),
    ]  # the 20 ms pause is too short to split
    assert energy_segments(torch.zeros(100)) == [] and energy_segments(torch.zeros(16000)) == []


def test_ctc_pieces():
    assert ctc_greedy_decode(
        torch.log(torch.eye(11)[[2, 2, 0, 2, 5, 5]] + 1e-9)[None], torch.tensor([6])
    ) == ['114']
    assert (
        spell('907') == 'nine zero seven'
        and error_rates(['12'], ['13'])['wer'] == 0.5
        and edit_distance('abc', 'abd') == 1
    )
    x = torch.zeros(100000)
    x[50000:50200] = 0.0
    x[:] = 0.1
    x[60000:60160] = 0.0
    cuts = quiet_cuts(x, 64000)
    assert (
        cuts[0] == 0 and cuts[-1] == len(x) and all(b - a <= 64000 for a, b in zip(cuts, cuts[1:]))
    )


def test_ctc_learner_trains_one_epoch():
    torch.manual_seed(0)
    feats = [torch.randn(int(n), 40) for n in torch.randint(60, 120, (12,))]
    digits = ['12', '345', '6', '7890', '11', '2'] * 2
    dls = DataLoaders.from_datasets(
        CTCDataset(feats, digits), CTCDataset(feats[:4], digits[:4]), bs=4, collate_fn=ctc_collate
    )
    learn = CTCLearner(CTCRecogniser(channels=32, hidden=32), dls, quiet=True)
    learn.fit(1, lr=1e-3)
    assert np.isfinite(learn.recorder.history[-1]['valid_loss'])


def test_stream_and_transcribe_rtf(word):
    long = torch.cat([torch.zeros(8000), word, torch.zeros(8000), word])
    dets, probs, rtf = stream_keywords(KeywordCNN().eval(), long, threshold=0.0)
    assert probs.shape[1] == len(KWS_LABELS) and rtf > 0
    text, rtf = transcribe(CTCRecogniser(), long, max_s=1.0)
    assert isinstance(text, str) and rtf > 0
    with pytest.raises(ValueError):
        transcribe(CTCRecogniser(), torch.zeros(0))


def test_recipes_train_and_transcribe(tmp_path, word):
    _, m = train_kws(KWSConfig(epochs=1, n_train=1, n_test=1, out=tmp_path / 'kws', quiet=True))
    assert (
        m['task'] == 'kws'
        and 0 <= m['test_accuracy'] <= 1
        and (tmp_path / 'kws' / 'model.safetensors').exists()
    )
    sf.write(tmp_path / 'w.wav', word.numpy(), 16000)
    assert isinstance(transcribe_file(tmp_path / 'w.wav', tmp_path / 'kws')['text'], str)
    _, m = train_ctc(
        CTCConfig(epochs=1, n_train=4, n_test=2, bs=4, out=tmp_path / 'ctc', quiet=True)
    )
    assert (
        m['task'] == 'ctc'
        and json.loads((tmp_path / 'ctc' / 'config.json').read_text())['task'] == 'ctc'
    )
    assert isinstance(transcribe_file(tmp_path / 'w.wav', tmp_path / 'ctc')['text'], str)
    with pytest.raises(FileNotFoundError, match='train speech'):
        transcribe_file(tmp_path / 'w.wav', tmp_path / 'none')
    with pytest.raises(ValueError, match='at least 1'):
        train_ctc(CTCConfig(n_train=0))


def test_recipe_defaults_are_the_chapters_standard_run():
    kws, ctc = KWSConfig(), CTCConfig()
    assert (kws.epochs, kws.lr, kws.bs, kws.n_train, kws.n_test) == (20, 1e-2, 64, 100, 30)
    assert (ctc.epochs, ctc.lr, ctc.bs, ctc.n_train, ctc.n_test) == (15, 3e-3, 16, 400, 100)


def test_cli_train_and_transcribe(tmp_path, word):
    from bigmodel_book.cli.commands import train_speech_main, transcribe_main

    out = tmp_path / 'kws'
    m = train_speech_main(
        ['--task', 'kws', '--epochs', '1', '--n-train', '1', '--n-test', '1']
        + ['--out', str(out), '--quiet']
    )
    assert m['task'] == 'kws' and (out / 'model.safetensors').exists()
    sf.write(tmp_path / 'w.wav', word.numpy(), 16000)
    assert isinstance(transcribe_main([str(tmp_path / 'w.wav'), '--model', str(out)]), str)
    with pytest.raises(FileNotFoundError, match='train speech'):
        transcribe_main([str(tmp_path / 'w.wav'), '--model', str(tmp_path / 'none')])
    with pytest.raises(SystemExit):
        train_speech_main(['--task', 'asr'])


@pytest.mark.gpu
def test_features_and_bf16_forward_on_gpu(word):
    x = word[None].repeat(8, 1).cuda()
    assert torch.allclose(LogMel().cuda()(x).cpu(), LogMel()(x.cpu()), atol=1e-3)
    model = KeywordCNN().cuda().eval()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (8, len(KWS_LABELS)) and torch.isfinite(out.float()).all()
