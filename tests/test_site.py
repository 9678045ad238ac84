"""The offline book site: built from the notebooks with no network, every notebook a page, no
broken internal links, and pages that look like a book in a real browser (headless Chromium,
network off): typeset maths, loaded figures, highlighted code, hidden cells hidden, sidebar links
that resolve. Screenshots go to test-output/site/."""

import re, shutil, subprocess, sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / 'test-output' / 'site'
sys.path.insert(0, str(ROOT / 'tools'))
import offline_site  # noqa: E402
import readme  # noqa: E402

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site') / '_docs'
    r = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'offline_site.py'), '--out', str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return out


class Links(HTMLParser):
    "Collects ids and the href/src of every element."

    def __init__(self):
        super().__init__()
        self.ids, self.refs = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if 'id' in a:
            self.ids.add(a['id'])
        for k in ('href', 'src'):
            if a.get(k):
                self.refs.append((tag, a[k]))


def parse(page: Path) -> Links:
    p = Links()
    p.feed(page.read_text(encoding='utf-8'))
    return p


def test_every_notebook_has_a_page(site):
    notebooks = sorted((ROOT / 'nbs').glob('*.ipynb'))
    pages = {p.name for p in site.glob('*.html')}
    assert len(pages) == len(notebooks) and 'index.html' in pages
    sidebar = [nb for _, items in offline_site.sidebar_entries() for nb in items]
    assert sorted(sidebar) == sorted(p.name for p in notebooks), (
        'nbs/sidebar.yml must list every notebook exactly once'
    )


def test_no_broken_internal_links(site):
    parsed = {p.name: parse(p) for p in site.glob('*.html')}
    broken = []
    for name, links in parsed.items():
        for tag, ref in links.refs:
            if re.match(r'^(https?:|mailto:|data:|javascript:)', ref):
                continue
            path, _, frag = ref.partition('#')
            target = (site / name).parent / path if path else site / name
            if not target.exists():
                broken.append(f'{name}: {ref}')
                continue
            if (
                frag
                and target.suffix == '.html'
                and frag not in parsed.get(target.name, Links()).ids
            ):
                broken.append(f'{name}: {ref} (no #{frag})')
    assert not broken, broken[:20]


def test_hidden_cells_hidden_and_api_docs_rendered(site):
    for page in site.glob('*.html'):
        text = page.read_text(encoding='utf-8')
        assert 'google.colab' not in text and 'nbdev.showdoc' not in text, (
            f'{page.name} shows a hidden cell'
        )
        assert '#| ' not in text, f'{page.name} shows nbdev directives'
    learner = (site / 'train.learner.html').read_text(encoding='utf-8')
    assert re.search(r'<h3[^>]*>\s*Learner', learner) and 'def Learner(' in re.sub(
        r'<[^>]+>', '', learner
    ), 'show_doc output missing'
    assert 'class="highlight' in learner and '<span class="k' in learner, 'code is not highlighted'


@pytest.mark.skipif(CHROMIUM is None, reason='Chromium is not installed (apt-get install chromium)')
def test_pages_in_a_real_browser(site):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    external = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                '--no-sandbox',
                '--disable-gpu',
                '--no-first-run',
                '--disable-background-networking',
                '--disable-component-update',
                '--disable-sync',
            ],
        )
        ctx = browser.new_context(offline=True, viewport={'width': 1300, 'height': 1800})
        page = ctx.new_page()
        page.on(
            'request',
            lambda r: external.append(r.url) if not r.url.startswith(('file:', 'data:')) else None,
        )
        checks = {
            'index.html': 'front page',
            'train.learner.html': 'formulas',
            'data.external.html': 'plots',
        }
        for name, what in checks.items():
            page.goto((site / name).as_uri())
            page.wait_for_load_state('load')
            info = page.evaluate("""() => {
                const main = document.querySelector('main').cloneNode(true);
                main.querySelectorAll('pre, code, math').forEach(e => e.remove());
                const imgs = [...document.querySelectorAll('main img')];
                const maths = [...document.querySelectorAll('math')];
                return {text: main.innerText, maths: maths.length,
                        mathWidth: Math.max(0, ...maths.map(m => m.getBoundingClientRect().width)),
                        images: imgs.length,
                        loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
                        nav: [...document.querySelectorAll('nav.sidebar a')]
                            .map(a => a.getAttribute('href')),
                        title: document.title};
            }""")
            page.screenshot(path=str(SHOTS / f'{Path(name).stem}.png'))
            raw_maths = r'\$\$|(?<![\w$])\$[^$\s][^$\n]{0,80}\$(?![\w$])'
            assert not re.search(raw_maths, info['text']), (
                f'{name}: raw $...$ left in the text'
            )
            assert info['images'] == info['loaded'], (
                f"{name}: {info['images'] - info['loaded']} image(s) failed to load"
            )
            assert len(info['nav']) >= len(list((ROOT / 'nbs').glob('*.ipynb'))) and all(
                (site / h).exists() for h in info['nav']
            )
            if what == 'formulas':
                assert info['maths'] >= 10 and info['mathWidth'] > 20, 'formulas are not typeset'
            if what == 'plots':
                assert info['images'] >= 3
        browser.close()
    assert not external, f'pages asked the network for {external[:5]}'


def test_readme_overview_matches_front_page():
    assert readme.main(['--check']) == 0, (
        'README.md is out of date with nbs/index.ipynb: run python tools/readme.py'
    )
    text = (ROOT / 'README.md').read_text()
    commands = re.findall(r'^make \w+', text, flags=re.M)
    assert commands[:2] == ['make book', 'make test'], (
        'README must start with the two set-up commands'
    )
