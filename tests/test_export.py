"""Export: model directories round-trip without pickle, tampered or missing files are refused,
ONNX agrees with PyTorch."""

import json, shutil
from pathlib import Path

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


# ---- hardening (issue 15): the builder registry, the config digest, validation, links ----

import bigmodel_book.lifecycle.export as E  # noqa: E402
from bigmodel_book.lifecycle.export import (  # noqa: E402
    BUILDERS,
    check_model,
    config_digest,
    read_config,
    register_builder,
)


def _edit(d, forge=False, **kv):
    "Change config fields; with `forge`, recompute the config's digest as a forger would."
    cfg = json.loads((d / 'config.json').read_text())
    cfg.update(kv)
    if forge:
        cfg['config_sha256'] = config_digest(cfg)
    (d / 'config.json').write_text(json.dumps(cfg))
    return cfg


def _refused(d, **kw) -> str:
    with pytest.raises(ModelDirError) as e:
        load_model_dir(d, **kw)
    msg = str(e.value)
    assert '\n' not in msg and len(msg) > 20, msg  # one line that says something
    return msg


@pytest.fixture
def small_dir(tmp_path):
    "A fresh mlp model directory without graph exports (fast), labels '0'..'9'."
    torch.manual_seed(0)
    return save_model_dir(
        mlp(n_hidden=8).eval(),
        tmp_path / 'm',
        builder=BUILDER,
        kwargs={'n_hidden': 8},
        input_shape=[64],
        labels=[str(i) for i in range(10)],
        formats=(),
    )


def _book_callables() -> list[str]:
    "Every top-level function and class the book's notebooks define, as 'module:name'."
    from bigmodel_book._modidx import d

    return [
        f"{mod}:{sym[len(mod) + 1 :]}"
        for mod, syms in d['syms'].items()
        for sym in syms
        if '.' not in sym[len(mod) + 1 :]
    ]


def test_registry_refuses_every_other_callable(monkeypatch):
    names = _book_callables() + [
        'os:system', 'os:remove', 'subprocess:run', 'builtins:open', 'builtins:exec',
        'shutil:rmtree', 'torch:load', 'pickle:loads', 'importlib:import_module',
        'bigmodel_book.learner:mlp', 'bigmodel_book.vision:LeNet5',  # first-edition shims
        'bigmodel_book.train.learner:mlp ', 'Bigmodel_book.train.learner:mlp',
    ]  # fmt: skip
    refused = [n for n in names if n not in BUILDERS]
    assert len(refused) > 300 and 'bigmodel_book.core:download' in refused
    assert 'bigmodel_book.cli.commands:train_digits_main' in refused
    imported = []
    monkeypatch.setattr(E, 'importlib', type('Spy', (), {'import_module': imported.append}))
    for name in refused:
        with pytest.raises(ModelDirError, match='Refusing builder'):
            resolve_builder(name)
    assert imported == []  # refused before anything was imported (let alone called)
    for name in BUILDERS:  # the registered names do reach the import (the spy returns None)
        with pytest.raises(ModelDirError, match='cannot be imported'):
            resolve_builder(name)
    assert sorted(imported) == sorted(n.split(':')[0] for n in BUILDERS)


MALICIOUS = [
    'bigmodel_book.core:download',
    'bigmodel_book.cli.commands:train_digits_main',
    'builtins:open',
    'subprocess:run',
    'os:system',
    'pathlib:Path',
]


def _malicious(tmp_path):
    "Configs whose builder would write (or create) tmp_path / 'marker' if it were ever called."
    src = tmp_path / 'payload.txt'
    src.write_text('written by a model directory')
    marker = tmp_path / 'marker'
    return marker, {
        'bigmodel_book.core:download': {
            'url': src.as_uri(), 'sha256': None, 'dest': str(marker),
        },
        'bigmodel_book.cli.commands:train_digits_main': {
            'argv': ['--epochs', '1', '--out', str(marker)],
        },
        'builtins:open': {'file': str(marker), 'mode': 'w'},
        'subprocess:run': {'args': ['touch', str(marker)]},
        'os:system': {'command': f"touch {marker}"},
        'pathlib:Path': {'args': str(marker)},
    }  # fmt: skip


def test_malicious_builder_control(tmp_path):
    "The payload is real: called directly, download writes the marker (so the next test can fail)."
    from bigmodel_book.core import download

    marker, configs = _malicious(tmp_path)
    download(**configs['bigmodel_book.core:download'])
    assert marker.read_text() == 'written by a model directory'


@pytest.mark.parametrize('forge', [False, True])
@pytest.mark.parametrize('builder', MALICIOUS)
def test_malicious_builder_has_no_side_effect(small_dir, tmp_path, builder, forge):
    marker, configs = _malicious(tmp_path)
    _edit(small_dir, forge, builder=builder, kwargs=configs[builder])
    msg = _refused(small_dir)
    assert ('Refusing builder' if forge else 'modified') in msg
    with pytest.raises(ModelDirError):
        read_config(small_dir)
    assert not marker.exists() and not (tmp_path / 'marker').exists()


@pytest.mark.parametrize(
    'field, value',
    [
        ('input_shape', [32]),
        ('input_shape', [1, 8, 8]),
        ('input_dtype', 'int64'),
        ('input_dtype', 'bogus'),
        ('labels', ['a', 'b', 'c']),
        ('labels', [str(i) for i in reversed(range(10))]),
        ('kwargs', {'n_hidden': 16}),
        ('builder', 'bigmodel_book.vision.models:LeNet5'),
        ('torch', '0.1'),
        ('created', '1970-01-01T00:00:00Z'),
        ('added', 1),
        ('config_sha256', '0' * 64),
    ],
)
def test_config_edits_are_damage(small_dir, field, value):
    _edit(small_dir, **{field: value})
    msg = _refused(small_dir)
    assert 'config.json was modified' in msg and 'config_sha256' in msg


def test_config_digest_ignores_layout_and_pins_the_directory(small_dir):
    cfg = json.loads((small_dir / 'config.json').read_text())
    (small_dir / 'config.json').write_text(json.dumps(cfg, indent=4, sort_keys=True))
    load_model_dir(small_dir)  # re-indented, same fields: not damage
    del cfg['config_sha256']
    (small_dir / 'config.json').write_text(json.dumps(cfg))
    assert 'modified' in _refused(small_dir)  # a removed digest is not a valid one
    _edit(small_dir, True)
    pin = {'config.json': E.sha256sum(small_dir / 'config.json')}
    load_model_dir(small_dir, expect_sha256=pin)
    _edit(small_dir, True, labels=list('abcdefghij'))  # forged: the digest was recomputed...
    load_model_dir(small_dir)
    assert 'modified' in _refused(small_dir, expect_sha256=pin)  # ...but a pinned digest holds


def test_first_edition_dir_says_what_to_do(small_dir):
    _edit(small_dir, format='bigmodel-book model v1', config_sha256=None)
    assert 'export it again' in _refused(small_dir)


@pytest.mark.parametrize(
    'field, value, words',
    [
        ('input_shape', [32], 'forward pass'),
        ('input_shape', [1, 8, 8], 'forward pass'),
        ('input_shape', [0], 'positive integers'),
        ('input_shape', [64.0], 'positive integers'),
        ('input_shape', [True], 'positive integers'),
        ('input_shape', 64, 'positive integers'),
        ('input_shape', '64', 'positive integers'),
        ('input_shape', [1 << 14, 1 << 14], 'elements'),  # refused before 2 GiB of zeros
        ('input_dtype', 'int64', 'forward pass'),
        ('input_dtype', 'bogus', 'one of'),
        ('input_dtype', 'load', 'one of'),  # torch.load is an attribute of torch, not a dtype
        ('input_dtype', None, 'one of'),
        ('labels', ['a', 'b', 'c'], '3 names'),
        ('labels', [str(i) for i in range(11)], '11 names'),
        ('labels', list(range(10)), 'list of strings'),
        ('labels', '0123456789', 'list of strings'),
        ('kwargs', [8], 'JSON object'),
        ('kwargs', {'n_hidden': 8, 'bogus': 1}, 'fails'),
        ('kwargs', {'n_hidden': -1}, 'fails'),
    ],
)
def test_config_is_validated_against_the_model(small_dir, field, value, words):
    _edit(small_dir, True, **{field: value})  # a consistent digest: only validation can object
    msg = _refused(small_dir)
    assert field in msg and words in msg, msg
    if words not in ('forward pass', 'fails') and 'names' not in words:  # data checks alone
        with pytest.raises(ModelDirError, match=field):
            read_config(small_dir)


def test_check_model_and_save_refuse_a_bad_contract(tmp_path):
    model = mlp().eval()
    assert check_model(model, [64], 'float32', [str(i) for i in range(10)]) == (2, 10)
    assert check_model(mlp(n_out=1), [64]) == (2, 1)
    bad = [
        ({'input_dtype': 'int64'}, 'input_dtype'),
        ({'input_dtype': 'bogus'}, 'input_dtype'),
        ({'labels': ['a', 'b']}, 'labels'),
        ({'labels': 'ab'}, 'labels'),
        ({'input_shape': [63]}, 'input_shape'),
    ]
    for change, field in bad:
        args = dict(builder=BUILDER, input_shape=[64], formats=()) | change
        with pytest.raises(ValueError, match=field):
            save_model_dir(model, tmp_path / 'bad', **args)
        assert not (tmp_path / 'bad').exists()  # nothing written


def _outside(d: Path, name: str) -> None:
    "Move `name` out of the directory and leave a symbolic link to it in its place."
    target = d.parent / f"outside-{name}"
    shutil.move(d / name, target)
    (d / name).symlink_to(target)


@pytest.mark.parametrize(
    'change',
    [
        lambda d: _outside(d, 'model.safetensors'),
        lambda d: _outside(d, 'config.json'),
        lambda d: (d / 'notes.txt').symlink_to('/etc/hostname'),  # not even listed
        lambda d: (d / 'sub').symlink_to(d.parent),
        lambda d: (d / 'loop').symlink_to(d / 'loop'),
        lambda d: (
            (d / 'model.safetensors').unlink()
            or (d / 'model.safetensors').symlink_to('../m/../outside.safetensors')
        ),
    ],
)
def test_links_leaving_the_directory_are_refused(small_dir, change):
    change(small_dir)
    assert 'leave the directory' in _refused(small_dir)


def test_links_inside_the_directory_load(small_dir, tmp_path):
    (small_dir / 'model.safetensors').rename(small_dir / 'weights.bin')
    (small_dir / 'model.safetensors').symlink_to('weights.bin')
    (tmp_path / 'alias').symlink_to(small_dir)  # the directory itself reached through a link
    model, _ = load_model_dir(tmp_path / 'alias')
    assert isinstance(model, torch.nn.Sequential)


class TinyNet(torch.nn.Module):
    "A user's own model, registered by the test."

    def __init__(self, n_out: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(4, n_out)

    def forward(self, x):
        return self.fc(x)


def test_register_builder(tmp_path):
    name, before = f"{TinyNet.__module__}:TinyNet", set(BUILDERS)
    with pytest.raises(ModelDirError, match='register_builder'):
        builder_name(TinyNet())
    try:
        assert register_builder(TinyNet) is TinyNet and name in BUILDERS
        d = save_model_dir(
            TinyNet(), tmp_path / 't', input_shape=[4], labels=list('abc'), formats=()
        )
        model, cfg = load_model_dir(d)
        assert cfg['builder'] == name and isinstance(model, TinyNet)
    finally:
        BUILDERS.discard(name)
    assert 'Refusing builder' in _refused(d)  # unregistered again: refused
    for bad in ('os.system', 'a:b:c', 'x:y()', 'mod:', ':f', 'a b:c'):
        with pytest.raises(ValueError, match='Cannot register'):
            register_builder(bad)

    class Local(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match='Cannot register'):
        register_builder(Local)
    assert BUILDERS == before


def test_edge_refuses_bad_input(tmp_path):
    "ExecuTorch helpers: clear errors for missing programs, bad thread counts and no calibration."
    from bigmodel_book.lifecycle.edge import EdgeModel, quantize_int8_pt2e, set_executorch_threads

    with pytest.raises(FileNotFoundError, match='No ExecuTorch program'):
        EdgeModel(tmp_path / 'missing.pte')
    with pytest.raises(ValueError, match='at least 1 thread'):
        set_executorch_threads(0)
    with pytest.raises(ValueError, match='calibration gave no batches'):
        quantize_int8_pt2e(mlp(n_hidden=8), torch.rand(2, 64), [])
    with pytest.raises(ValueError, match='Unknown export formats'):
        save_model_dir(mlp(), tmp_path / 'm', builder=BUILDER, input_shape=[64], formats=['tflite'])
