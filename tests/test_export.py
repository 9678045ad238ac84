"""Export: model directories round-trip without pickle, tampered or missing files are refused,
ONNX agrees with PyTorch."""

import json, shutil

import pytest, torch

from bigmodel_book.lifecycle.export import (
    ModelDirError,
    builder_name,
    export_checkpoint,
    export_onnx,
    load_model_dir,
    onnx_max_diff,
    resolve_builder,
    save_model_dir,
)
from bigmodel_book.train.checkpoint import save_weights
from bigmodel_book.train.learner import mlp

BUILDER = 'bigmodel_book.train.learner:mlp'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = mlp(n_hidden=32).eval()
    d = save_model_dir(
        model,
        tmp_path_factory.mktemp('m') / 'mlp',
        builder=BUILDER,
        kwargs={'n_hidden': 32},
        input_shape=[64],
        labels=[str(i) for i in range(10)],
    )
    return model, d


def test_round_trip_and_onnx(exported):
    model, d = exported
    cfg = json.loads((d / 'config.json').read_text())
    assert (
        set(cfg['files']) == {'model.safetensors', 'model.onnx', 'model.pt2'}
        and cfg['builder'] == BUILDER
    )
    loaded, config = load_model_dir(d)
    x = torch.rand(7, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training and config['input_shape'] == [64]
    assert (
        onnx_max_diff(d / 'model.onnx', model, x) < 1e-5
    )  # the stated tolerance for this MLP (logits of order 1)


def _copy(d, tmp_path):
    c = tmp_path / 'copy'
    shutil.copytree(d, c)
    return c


@pytest.mark.parametrize(
    'case',
    [
        'flip',
        'truncate',
        'missing_weights',
        'missing_onnx',
        'missing_config',
        'bad_json',
        'foreign_builder',
        'wrong_kwargs',
        'bad_format',
        'path_name',
    ],
)
def test_tampered_dir_is_refused(exported, tmp_path, case):
    _, d = exported
    c = _copy(d, tmp_path)
    cfg = json.loads((c / 'config.json').read_text())
    w = c / 'model.safetensors'
    if case == 'flip':
        b = bytearray(w.read_bytes())
        b[-3] ^= 0xFF
        w.write_bytes(bytes(b))
    elif case == 'truncate':
        w.write_bytes(w.read_bytes()[:100])
    elif case == 'missing_weights':
        w.unlink()
    elif case == 'missing_onnx':
        (c / 'model.onnx').unlink()
    elif case == 'missing_config':
        (c / 'config.json').unlink()
    elif case == 'bad_json':
        (c / 'config.json').write_text('{"format": ')
    elif case == 'foreign_builder':
        cfg['builder'] = 'os:system'
    elif case == 'wrong_kwargs':
        cfg['kwargs'] = {'n_hidden': 16}
    elif case == 'bad_format':
        cfg['format'] = 'pickle'
    elif case == 'path_name':
        cfg['files']['../config.json'] = 'x'
    if case in ('foreign_builder', 'wrong_kwargs', 'bad_format', 'path_name'):
        (c / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError) as e:
        load_model_dir(c)
    msg = str(e.value)
    assert len(msg) > 20
    if case in ('flip', 'truncate'):
        assert 'modified' in msg and 'model.safetensors' in msg
    if case.startswith('missing_') and case != 'missing_config':
        assert 'missing' in msg
    if case == 'foreign_builder':
        assert 'Refusing' in msg


def test_expected_digest(exported):
    _, d = exported
    with pytest.raises(ModelDirError, match='modified'):
        load_model_dir(d, expect_sha256={'model.safetensors': '0' * 64})


@pytest.mark.parametrize(
    'name',
    [
        'os:system',
        'builtins:eval',
        'bigmodel_book:__import__',
        'bigmodel_book.train.learner:mlp()',
        'subprocess:run',
        'bigmodel_book.train.learner:does_not_exist',
        3,
    ],
)
def test_builder_allow_list(name):
    with pytest.raises(ModelDirError):
        resolve_builder(name)


def test_builder_name_and_bad_args(tmp_path):
    with pytest.raises(ModelDirError, match='not a bigmodel_book class'):
        builder_name(torch.nn.Linear(2, 2))
    with pytest.raises(ModelDirError, match='does not build'):
        save_model_dir(
            mlp(), tmp_path / 'a', builder=BUILDER, kwargs={'n_hidden': 3}, input_shape=[64]
        )
    for shape in ([], [0], [64.0], ['a']):
        with pytest.raises(ValueError, match='input_shape'):
            save_model_dir(mlp(), tmp_path / 'b', builder=BUILDER, input_shape=shape, formats=())
    with pytest.raises(ValueError, match='formats'):
        save_model_dir(mlp(), tmp_path / 'c', builder=BUILDER, input_shape=[64], formats=['tflite'])


def test_onnx_dynamic_batch(tmp_path):
    model = mlp().eval()
    p = export_onnx(model, torch.zeros(2, 64), tmp_path / 'm.onnx')
    for b in (1, 3, 33):
        assert onnx_max_diff(p, model, torch.rand(b, 64)) < 1e-5


def test_export_checkpoint(tmp_path):
    torch.manual_seed(1)
    model = mlp(n_hidden=16)
    save_weights(model, tmp_path / 'run' / 'model.safetensors')
    out = export_checkpoint(
        tmp_path / 'run',
        BUILDER,
        [64],
        tmp_path / 'exported',
        kwargs={'n_hidden': 16},
        formats=(),
    )
    loaded, cfg = load_model_dir(out)
    x = torch.rand(4, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert set(cfg['files']) == {'model.safetensors'}
    with pytest.raises(ModelDirError, match='does not fit'):
        export_checkpoint(tmp_path / 'run', BUILDER, [64], tmp_path / 'x', formats=())
    with pytest.raises(ValueError, match='JSON object'):
        export_checkpoint(tmp_path / 'run', BUILDER, [64], tmp_path / 'y', kwargs=[1])
    with pytest.raises(FileNotFoundError):
        export_checkpoint(tmp_path / 'nothing', BUILDER, [64], tmp_path / 'z')


def test_export_main(tmp_path, capsys):
    from bigmodel_book.cli.core import main

    torch.manual_seed(1)
    model = mlp(n_hidden=16)
    save_weights(model, tmp_path / 'run' / 'model.safetensors')
    common = ['export', '--checkpoint', str(tmp_path / 'run'), '--builder', BUILDER]
    common += ['--input-shape', '64']
    argv = common + ['--kwargs', '{"n_hidden": 16}', '--formats', '--out', str(tmp_path / 'e')]
    assert main(argv) == 0 and 'wrote' in capsys.readouterr().out
    loaded, cfg = load_model_dir(tmp_path / 'e')
    x = torch.rand(4, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert set(cfg['files']) == {'model.safetensors'}
    for bad in (['--formats'], ['--kwargs', '[1]'], ['--kwargs', '{"n_hidden": ']):
        assert main(common + bad + ['--out', str(tmp_path / 'x')]) == 1  # an error, not a crash
        assert 'error' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['export', '--builder', BUILDER])  # --checkpoint, --input-shape, --out missing


@pytest.mark.gpu
def test_export_and_load_on_cuda(tmp_path):
    model = mlp().to('cuda').eval()
    d = save_model_dir(model, tmp_path / 'gpu', builder=BUILDER, input_shape=[64])
    loaded, _ = load_model_dir(d, device='cuda')
    x = torch.rand(8, 64, device='cuda')
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x)) and next(loaded.parameters()).is_cuda
    assert onnx_max_diff(d / 'model.onnx', model.cpu(), x.cpu()) < 1e-5
