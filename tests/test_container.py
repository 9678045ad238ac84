"""The model server's container images (docker/Dockerfile for the CPU, docker/Dockerfile.cuda for
NVIDIA GPUs): their shape (multi-stage, non-root, health check, entrypoint, build context) and
their install and run steps carried out.

Where a Docker daemon answers, the CPU image is built and run. Elsewhere (CI, the book's machines:
a docker client without a daemon counts as none), the final stage's `pip install` commands run,
translated, in the fresh virtual environment of the wheel tests (conftest's `fresh_env`: the
wheel built once per session), with `--no-index`, so every requirement must be met by what is
installed and nothing is downloaded; then the image's entrypoint and command serve a model
directory from that environment, on 127.0.0.1 instead of 0.0.0.0, and the image's health check
and a prediction are sent to it."""

import fnmatch, inspect, json, re, shlex, subprocess, time, uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / 'docker'
FILES = ['Dockerfile', 'Dockerfile.cuda']
WHEEL_GLOB = '$(ls /wheels/bigmodel_book-*.whl)'
TOKEN = 'container-test-token'


def instructions(path: Path) -> list[tuple[str, str]]:
    "A Dockerfile's instructions as (KEYWORD, arguments): comments dropped, continuations joined."
    out, cur = [], ''
    for line in path.read_text().splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith('#')):
            continue
        if line.rstrip().endswith('\\'):
            cur += line.rstrip()[:-1] + ' '
            continue
        keyword, _, args = (cur + line).strip().partition(' ')
        out.append((keyword.upper(), ' '.join(args.split())))
        cur = ''
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    "The build stages of a Dockerfile, each a list of instructions that starts with its FROM."
    found = []
    for kw, args in instructions(path):
        if kw == 'FROM':
            found.append([])
        found[-1].append((kw, args))
    return found


def only(stage, keyword: str) -> str:
    "The arguments of the one `keyword` instruction of a stage."
    hits = [a for k, a in stage if k == keyword]
    assert len(hits) == 1, f'expected one {keyword}, got {hits}'
    return hits[0]


def health_command(stage) -> list[str]:
    "The exec-form command of the stage's HEALTHCHECK."
    args = only(stage, 'HEALTHCHECK')
    return json.loads(args[args.index('CMD ') + 4 :])


def pip_installs(stage) -> list[list[str]]:
    "Every `pip install` command of the stage's RUN instructions, split into words."
    found = []
    for kw, args in stage:
        if kw == 'RUN':
            for part in args.split('&&'):
                words = shlex.split(part.replace(WHEEL_GLOB, '@WHEEL@'))
                if words[:2] == ['pip', 'install']:
                    found.append(words)
    return found


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def env_of(stage) -> dict:
    "The variables the stage's ENV instructions set (KEY=VALUE form)."
    env = {}
    for kw, args in stage:
        if kw == 'ENV':
            env |= dict(w.split('=', 1) for w in shlex.split(args))
    return env


@pytest.mark.parametrize('name', FILES)
def test_dockerfile_shape(name):
    builder, final = stages(DOCKER / name)[0], stages(DOCKER / name)[-1]
    assert len(stages(DOCKER / name)) == 2 and only(builder, 'FROM').endswith(' AS builder')
    assert any(k == 'RUN' and 'pip wheel' in a for k, a in builder), 'the builder builds the wheel'
    runs = ' '.join(a for k, a in final if k == 'RUN')
    assert 'pip wheel' not in runs and not re.search(r'apt-get|gcc|build-essential|git ', runs)
    assert ('COPY', '--from=builder /wheels /wheels') in final and 'rm -rf /wheels' in runs
    # non-root: a USER that is not root, after every RUN
    kws = [k for k, _ in final]
    user = only(final, 'USER')
    assert user not in ('root', '0') and kws.index('USER') > max(
        i for i, k in enumerate(kws) if k == 'RUN'
    )
    # the entrypoint is the CLI's server on every interface, on the exposed port
    entry, cmd = json.loads(only(final, 'ENTRYPOINT')), json.loads(only(final, 'CMD'))
    assert entry == ['bigmodel-book', 'serve']
    assert option(cmd, '--host') == '0.0.0.0' and option(cmd, '--model') == '/models/model'
    port = option(cmd, '--port')
    assert only(final, 'EXPOSE') == port
    check = health_command(final)
    assert f"'http://127.0.0.1:{port}/health'" in check[-1] and check[0] == 'python'
    assert ('--device' in cmd and option(cmd, '--device') == 'cuda') == name.endswith('.cuda')


def test_health_endpoint_needs_no_token():
    "The health check sends no token, so /health must stay open when the server has one."
    from bigmodel_book.lifecycle.serve import RequestGuard

    assert '/health' in inspect.signature(RequestGuard).parameters['open_paths'].default


@pytest.mark.parametrize('name', FILES)
def test_torch_pins_match_the_makefile(name):
    pins = re.search(r'^TORCH_PINS := (.+)$', (ROOT / 'Makefile').read_text(), re.M).group(1)
    first = pip_installs(stages(DOCKER / name)[-1])[0]
    assert [w for w in first if '==' in w] == pins.split()
    cpu = name == 'Dockerfile'
    assert ('--index-url' in first and option(first, '--index-url').endswith('/cpu')) == cpu


def ignored(rel: str, patterns: list[str]) -> bool:
    "Whether the build context leaves out `rel`, as Docker reads .dockerignore (last match wins)."
    out = False
    for p in patterns:
        keep = p.startswith('!')
        pat = p.lstrip('!').rstrip('/')
        parts = rel.split('/')
        hit = any(
            fnmatch.fnmatch('/'.join(parts[: i + 1]), pat)
            or (pat.startswith('**/') and fnmatch.fnmatch(parts[i], pat[3:]))
            for i in range(len(parts))
        )
        if hit:
            out = not keep
    return out


def test_dockerignore_sends_only_the_build_inputs():
    lines = (ROOT / '.dockerignore').read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith('#')]
    copied = [a.split()[:-1] for k, a in stages(DOCKER / 'Dockerfile')[0] if k == 'COPY']
    sources = [s for words in copied for s in words]
    assert set(sources) == {'pyproject.toml', 'README.md', 'bigmodel_book'}, sources
    for keep in ['pyproject.toml', 'README.md', 'bigmodel_book/cli/core.py']:
        assert not ignored(keep, patterns), keep
    for drop in ['nbs/75_lifecycle.serve.ipynb', 'tests/test_serve.py', '.venv/bin/python',
                 '.git/HEAD', 'results/vision.json', 'bigmodel_book/__pycache__/core.pyc',
                 'runs/model.safetensors', '_docs/index.html']:
        assert ignored(drop, patterns), drop
    readme = re.search(r'^readme = "(.+)"$', (ROOT / 'pyproject.toml').read_text(), re.M)
    assert readme.group(1) in sources, 'the wheel build needs the readme that pyproject names'


def test_chapter_shows_the_dockerfile():
    "The serving chapter quotes docker/Dockerfile; the quote must be the file."
    cells = json.loads((ROOT / 'nbs' / '78_lifecycle.batching.ipynb').read_text())['cells']
    text = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    quoted = re.search(r'```dockerfile\n(.*?)```', text, re.S)
    assert quoted, 'the chapter has no ```dockerfile block'
    assert quoted.group(1).strip() == (DOCKER / 'Dockerfile').read_text().strip()


def translate(words: list[str], wheel: Path) -> list[str]:
    "A `pip install` of the image as one for the fresh environment: local wheel, no index."
    out, skip = [], False
    for w in words[2:]:
        if skip:
            skip = False
        elif w == '--index-url':
            skip = True
        elif w != '--no-cache-dir':
            out.append(w.replace('@WHEEL@', str(wheel)))
    return ['install', '--no-index', '-q', *out]


def model_dir(path: Path) -> tuple[Path, object]:
    "A LeNet-5 model directory (random weights: the server does not care) and its model."
    import torch
    from bigmodel_book.lifecycle.export import save_model_dir
    from bigmodel_book.vision.models import LeNet5

    torch.manual_seed(0)
    model = LeNet5(n_classes=10).eval()
    kw = dict(kwargs={'n_classes': 10}, input_shape=[1, 28, 28], formats=())
    return save_model_dir(model, path, labels=[str(i) for i in range(10)], **kw), model


def wait_for_health(url: str, proc=None, timeout: float = 120.0):
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f'the server exited: {proc.stderr.read()[-2000:]}')
        try:
            if httpx.get(url + '/health', timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f'no answer from {url}/health within {timeout} s')


def check_predictions(url: str, model):
    "/predict refuses a request without the token and answers the model's classes with it."
    import httpx, torch

    x = torch.rand(3, 1, 28, 28)
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post('/predict', json={'inputs': x.tolist()}).status_code == 401
        auth = {'authorization': f'Bearer {TOKEN}'}
        r = c.post('/predict', json={'inputs': x.tolist()}, headers=auth)
    assert r.status_code == 200, r.text
    with torch.no_grad():
        assert r.json()['predictions'] == model(x).argmax(-1).tolist()


@pytest.mark.slow
def test_image_steps_run_in_the_fresh_env(fresh_env, tmp_path):
    pytest.importorskip('fastapi')
    pytest.importorskip('onnxruntime')
    from bigmodel_book.lifecycle.serve import free_port

    env_dir, empty, env, wheel = fresh_env
    py, bin_dir = env_dir / 'bin' / 'python', env_dir / 'bin'
    steps = {}  # translated, the two images install the same: run each step once
    for name in FILES:
        for words in pip_installs(stages(DOCKER / name)[-1]):
            steps.setdefault(tuple(translate(words, wheel)), f'{name}: {shlex.join(words)}')
    for step, what in steps.items():
        r = subprocess.run([py, '-m', 'pip', *step], cwd=empty, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, f'{what}:\n{r.stderr[-2000:]}'
    assert len(steps) == 2, steps
    final = stages(DOCKER / 'Dockerfile')[-1]
    mdir, model = model_dir(tmp_path / 'model')
    port = free_port()
    cmd = json.loads(only(final, 'CMD'))
    swap = {'/models/model': str(mdir), '0.0.0.0': '127.0.0.1', only(final, 'EXPOSE'): str(port)}
    entry = json.loads(only(final, 'ENTRYPOINT'))
    argv = [str(bin_dir / entry[0]), *entry[1:], *(swap.get(w, w) for w in cmd)]
    run_env = env | env_of(final) | {'BMB_SERVE_TOKEN': TOKEN}
    proc = subprocess.Popen(argv, cwd=empty, env=run_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_health(f'http://127.0.0.1:{port}', proc)
        check = health_command(final)
        check[-1] = check[-1].replace(f":{only(final, 'EXPOSE')}/", f':{port}/')
        r = subprocess.run([str(py), *check[1:]], env=run_env, capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        check_predictions(f'http://127.0.0.1:{port}', model)
    finally:
        proc.terminate()
        proc.wait(30)


def docker_works() -> bool:
    try:
        return subprocess.run(['docker', 'info'], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not docker_works(), reason='no Docker daemon answers here')
def test_docker_image_builds_and_serves(tmp_path):
    from bigmodel_book.lifecycle.serve import free_port

    tag = f'bigmodel-book-serve-test:{uuid.uuid4().hex[:8]}'
    build = ['docker', 'build', '-f', str(DOCKER / 'Dockerfile'), '-t', tag, str(ROOT)]
    subprocess.run(build, check=True, timeout=3600)
    mdir, model = model_dir(tmp_path / 'model')
    port = free_port()
    run = ['docker', 'run', '-d', '--rm', '-p', f'127.0.0.1:{port}:8000', '-e',
           f'BMB_SERVE_TOKEN={TOKEN}', '-v', f'{mdir}:/models/model:ro', tag]
    cid = subprocess.run(run, check=True, capture_output=True, text=True).stdout.strip()
    try:
        wait_for_health(f'http://127.0.0.1:{port}')
        final = stages(DOCKER / 'Dockerfile')[-1]
        r = subprocess.run(['docker', 'exec', cid, *health_command(final)], timeout=30)
        assert r.returncode == 0
        uid = subprocess.run(['docker', 'exec', cid, 'id', '-u'], capture_output=True, text=True)
        assert uid.stdout.strip() not in ('', '0')
        check_predictions(f'http://127.0.0.1:{port}', model)
    finally:
        subprocess.run(['docker', 'rm', '-f', cid], capture_output=True)
        subprocess.run(['docker', 'rmi', '-f', tag], capture_output=True)
