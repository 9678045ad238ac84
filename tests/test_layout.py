"""The library's shape: arrows point down, argument parsing lives only in the CLI, and the wheel
holds every subpackage (built, installed into a fresh virtual environment, every module
imported)."""

import ast, json, re, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / 'bigmodel_book'
SHIM = '# compatibility shim'

# the floors of the library, bottom first; parts share one floor
LAYERS = {'core': 0, 'results': 1, 'data': 2, 'train': 3, 'cli': 5}
PARTS = {
    'vision',
    'sequence',
    'gan',
    'speech',
    'text',
    'recsys',
    'lifecycle',
    'scale',
    'trust',
    'apps',
}
# text builds on sequence's cells, applications on sequence and text; scaling up, trust and the
# lifecycle take any part's models
USERS = ('lifecycle', 'scale', 'trust')
ALLOWED = {('text', 'sequence'), ('apps', 'sequence'), ('apps', 'text')}
ALLOWED |= {(user, p) for user in USERS for p in PARTS}


def modules() -> dict[str, Path]:
    "Every generated module of the library (shims and the doc index left out), by dotted name."
    found = {}
    for path in sorted(LIB.rglob('*.py')):
        text = path.read_text(encoding='utf-8')
        if path.name in ('_modidx.py', '__init__.py') or SHIM in text:
            continue
        name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
        found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    "The bigmodel_book modules (and argparse) that a module imports."
    out = set()
    package = name.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[: len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ''
            out.add(target)
    return {m for m in out if m.startswith('bigmodel_book') or m == 'argparse'}


def floor(module: str) -> tuple[int, str]:
    "The layer of a module and its part (the first name below bigmodel_book)."
    part = module.split('.')[1] if '.' in module else module
    return (4 if part in PARTS else LAYERS[part]), part


def test_layers_point_down():
    wrong = []
    for name, path in modules().items():
        level, part = floor(name)
        for target in imports(name, path) - {'argparse', 'bigmodel_book'}:
            t_level, t_part = floor(target)
            upward = t_level > level
            sideways = t_level == level == 4 and t_part != part and (part, t_part) not in ALLOWED
            if upward or sideways:
                wrong.append(f'{name} imports {target}')
    assert not wrong, 'imports against the layer order:\n' + '\n'.join(wrong)


def test_argument_parsing_only_in_the_cli():
    parsing = [n for n, p in modules().items() if 'argparse' in imports(n, p)]
    assert parsing and all(n.startswith('bigmodel_book.cli.') for n in parsing), parsing


def test_one_module_per_notebook():
    "Each notebook exports to its own default module only, named after it."
    import json

    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
        code = [''.join(c['source']) for c in cells if c['cell_type'] == 'code']
        default = [s.split()[2] for s in code if s.startswith('#| default_exp')]
        others = [s.split('\n')[0] for s in code if s.startswith('#| export ')]
        assert not others, f'{nb.name} exports to other modules: {others}'
        if default:
            stem = nb.stem.split('_', 1)[1]
            assert stem == default[0], f'{nb.name} exports {default[0]}'


@pytest.mark.slow
def test_wheel_installs_and_imports_every_module(fresh_env):
    env_dir, empty, env, _ = fresh_env
    py = env_dir / 'bin' / 'python'
    names = sorted(n for n in modules())
    code = (
        'import importlib, bigmodel_book, pathlib\n'
        f'assert pathlib.Path(bigmodel_book.__file__).is_relative_to({str(env_dir)!r})\n'
        f'for n in {names!r}: importlib.import_module(n)\n'
        'print("imported", len(' + repr(names) + '))'
    )
    r = subprocess.run(
        [py, '-c', code], cwd=empty, capture_output=True, text=True, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    cli = subprocess.run(
        [env_dir / 'bin' / 'bigmodel-book', '--help'], capture_output=True, text=True
    )
    assert cli.returncode == 0 and 'train' in cli.stdout


# every `train` task at its smallest setting (quick scale), as a user of the wheel runs it
SMALLEST = {
    'digits': ['--epochs', '1'],
    'vision': ['--epochs', '1', '--model', 'lenet'],
    'sequence': ['--task', 'forecast', '--epochs', '1'],
    'gan': ['--variant', 'dcgan', '--epochs', '1', '--n-train', '256'],
    'speech': ['--task', 'kws', '--epochs', '1', '--n-train', '1', '--n-test', '1'],
    'text': ['--task', 'reviews', '--model', 'bag', '--epochs', '1', '--train-size', '500'],
    'recsys': ['--model', 'mf', '--epochs', '1'],
    'distributed': ['--epochs', '1'],
    'scale': ['--epochs', '1', '--train-size', '3000', '--d-model', '16', '--block-size', '16',
              '--bs', '8', '--experts', '2'],
    'apps': [  # a task with sub-tasks: one smallest run each
        ['--task', 'volatility', '--epochs', '1', '--train-stride', '20', '--hidden', '4'],
        ['--task', 'demand', '--epochs', '1', '--train-stride', '16', '--hidden', '16'],
        ['--task', 'traffic', '--epochs', '1', '--days', '11', '--hidden', '16'],
        ['--task', 'anomaly', '--epochs', '1', '--n-train', '1000'],
    ],
}


@pytest.mark.slow
def test_wheel_alone_trains_every_task(fresh_env):
    from bigmodel_book.cli.core import TRAIN_TASKS

    env_dir, empty, env, _ = fresh_env
    assert set(SMALLEST) == set(TRAIN_TASKS), 'give every train task its smallest setting here'
    exe = env_dir / 'bin' / 'bigmodel-book'
    for task, args in SMALLEST.items():
        runs = args if isinstance(args[0], list) else [args]
        for args in runs:
            out = empty / 'runs' / task / (args[1] if len(runs) > 1 else '')
            cmd = [exe, 'train', task, *args, '--out', str(out), '--quiet']
            r = subprocess.run(cmd, cwd=empty, capture_output=True, text=True, env=env, timeout=600)
            assert r.returncode == 0, f'{task} {args}: {r.stderr[-2000:]}'
            assert (out / 'model.safetensors').exists(), f'{task} {args} left no weights in {out}'
    for task in ('digits', 'vision'):  # a run leaves what export needs: no --builder
        out = empty / 'exported' / task
        cmd = [
            exe,
            'export',
            '--checkpoint',
            str(empty / 'runs' / task),
            '--formats',
            '--out',
            str(out),
        ]
        r = subprocess.run(cmd, cwd=empty, capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0 and (out / 'config.json').exists(), f'{task}: {r.stderr[-2000:]}'


REPO = 'git+https://github.com/bigmodel-book/bigmodel-book'


def colab_installs() -> list[list[str]]:
    "The pip arguments of the Colab cell, the same in every notebook that has one."
    cells = set()
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        text = nb.read_text(encoding='utf-8')
        cells |= set(re.findall(r"_run\(_pip \+ (\[.*?\]), check=True\)", text))
    return [ast.literal_eval(c.replace('\\"', '"')) for c in cells]


@pytest.mark.slow
def test_colab_cell_keeps_torch_and_skips_dev_tools(fresh_env):
    "The Colab cell, run as a dry run where torch is already installed (as on Colab)."
    env_dir, empty, env, wheel = fresh_env
    installs = colab_installs()
    assert len(installs) == 2, f'expected one package line and one carrier line, got {installs}'
    for args in installs:
        args = [a.replace(REPO, wheel.as_uri()) for a in args]
        cmd = [env_dir / 'bin' / 'python', '-m', 'pip', 'install', '--dry-run', '-q']
        r = subprocess.run(
            [*cmd, '--report', '-', *args],
            cwd=empty,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        names = {i['metadata']['name'].lower() for i in json.loads(r.stdout)['install']}
        assert not names & {'torch', 'torchvision', 'torchaudio'}, f'replaces torch: {names}'
        assert not names & {'nbdev', 'jupyterlab', 'playwright', 'hypothesis'}, names
