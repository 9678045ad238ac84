"""The offline book site: built from the notebooks with no network, every notebook a page, no
broken internal links, and pages that look like a book in a real browser (headless Chromium,
network off): typeset maths, loaded figures, highlighted code, hidden cells hidden, sidebar links
that resolve. Screenshots go to test-output/site/."""

import json, os, re, shutil, subprocess, sys
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
    if os.environ.get('BMB_SITE'):  # a site built already (python tools/offline_site.py)
        return Path(os.environ['BMB_SITE'])
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


BROWSER_ARGS = [
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]
PAGES = {
    'index.html': 'front page',
    'train.learner.html': 'formulas',
    'data.external.html': 'plots',
    'results.all.html': 'results',
}
PAGE_INFO = """() => {
    const main = document.querySelector('main').cloneNode(true);
    main.querySelectorAll('pre, code, math').forEach(e => e.remove());
    const imgs = [...document.querySelectorAll('main img')];
    const maths = [...document.querySelectorAll('math')];
    return {text: main.innerText, maths: maths.length,
            mathWidth: Math.max(0, ...maths.map(m => m.getBoundingClientRect().width)),
            images: imgs.length,
            loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
            nav: [...document.querySelectorAll('nav.sidebar a')].map(a => a.getAttribute('href')),
            toc: document.querySelectorAll('nav.toc a').length,
            copy: document.querySelectorAll('button.copy').length,
            code: document.querySelectorAll('.input_area .highlight').length,
            title: document.title};
}"""


@pytest.fixture(scope='module')
def browser():
    if CHROMIUM is None:
        pytest.skip('Chromium is not installed (apt-get install chromium)')
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


def open_page(browser, site, name, external, **context):
    "A page in a fresh offline context; requests that leave file: go to `external`."
    ctx = browser.new_context(offline=True, **context)
    page = ctx.new_page()
    page.on(
        'request',
        lambda r: external.append(r.url) if not r.url.startswith(('file:', 'data:')) else None,
    )
    page.goto((site / name).as_uri())
    page.wait_for_load_state('load')
    return page


def test_pages_in_a_real_browser(site, browser):
    external = []
    for name, what in PAGES.items():
        page = open_page(browser, site, name, external, viewport={'width': 1300, 'height': 1800})
        info = page.evaluate(PAGE_INFO)
        page.screenshot(path=str(SHOTS / f'{Path(name).stem}.png'))
        raw_maths = r'\$\$|(?<![\w$])\$[^$\s][^$\n]{0,80}\$(?![\w$])'
        assert not re.search(raw_maths, info['text']), f'{name}: raw $...$ left in the text'
        assert info['images'] == info['loaded'], (
            f"{name}: {info['images'] - info['loaded']} image(s) failed to load"
        )
        assert len(info['nav']) >= len(list((ROOT / 'nbs').glob('*.ipynb'))) and all(
            (site / h).exists() for h in info['nav']
        )
        assert info['copy'] == info['code'], f'{name}: code blocks without a copy button'
        if what in ('formulas', 'plots'):
            assert info['code'] > 0, f'{name}: no code blocks found (a wrong selector?)'
        if what == 'formulas':
            assert info['maths'] >= 10 and info['mathWidth'] > 20, 'formulas are not typeset'
            assert info['toc'] >= 5, 'no contents list on a chapter page'
        if what == 'plots':
            assert info['images'] >= 3
        page.context.close()
    assert not external, f'pages asked the network for {external[:5]}'


def test_search_from_file_url(site, browser):
    external = []
    page = open_page(browser, site, 'index.html', external, viewport={'width': 1300, 'height': 900})
    page.fill('#search', 'forget gate')
    page.wait_for_selector('#hits li a')
    hits = page.eval_on_selector_all('#hits li a', 'as => as.map(a => a.getAttribute("href"))')
    assert any(h.startswith('sequence.cells.html') for h in hits), hits[:5]
    page.screenshot(path=str(SHOTS / 'search.png'))
    page.click('#hits li a')
    page.wait_for_load_state('load')
    assert page.url.split('/')[-1].split('#')[0] == hits[0].split('#')[0]
    assert page.evaluate("document.querySelector('h1.title').innerText")
    page.context.close()
    assert not external, f'search asked the network for {external[:5]}'


def test_phone_layout_shows_text_first(site, browser):
    external = []
    for name in PAGES:
        page = open_page(
            browser,
            site,
            name,
            external,
            viewport={'width': 390, 'height': 844},
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
        )
        layout = page.evaluate("""() => ({
            sidebar: document.querySelector('nav.sidebar').offsetHeight,
            menu: document.getElementById('menu-toggle').offsetHeight,
            title: document.querySelector('h1.title').getBoundingClientRect().top})""")
        page.screenshot(path=str(SHOTS / f'{Path(name).stem}-phone.png'))
        assert layout['sidebar'] == 0 and layout['menu'] > 0, 'the menu is not folded on a phone'
        assert layout['title'] < 844 / 2, 'the first screen on a phone shows no text'
        page.click('#menu-toggle')
        assert page.evaluate("document.querySelector('nav.sidebar').offsetHeight") > 100
        page.context.close()
    assert not external


def test_dark_mode_follows_the_system_and_toggles(site, browser):
    external = []
    background = "getComputedStyle(document.body).backgroundColor"
    for name in PAGES:
        page = open_page(
            browser,
            site,
            name,
            external,
            color_scheme='dark',
            viewport={'width': 1300, 'height': 1800},
        )
        assert page.evaluate('document.documentElement.dataset.theme') == 'dark'
        assert page.evaluate(background) == 'rgb(24, 26, 27)'
        page.screenshot(path=str(SHOTS / f'{Path(name).stem}-dark.png'))
        page.click('#theme-toggle')
        assert page.evaluate(background) == 'rgb(255, 255, 255)'
        page.context.close()
    assert not external


def test_maths_spacing_and_equation_numbers():
    out = offline_site.typeset_math(r'$$\log p(x) = \ln q \tag{3}$$')
    assert '<span class="eqno">(3)</span>' in out and '(3)</mtext>' not in out
    assert '<mi>log</mi><mspace' in out and '<mi>ln</mi><mspace' in out
    assert '<mi>exp</mi><mspace' not in offline_site.typeset_math(r'$\exp(x)$')


def test_readme_overview_matches_front_page():
    assert readme.main(['--check']) == 0, (
        'README.md is out of date with nbs/index.ipynb: run python tools/readme.py'
    )
    text = (ROOT / 'README.md').read_text()
    commands = re.findall(r'^make \w+', text, flags=re.M)
    assert commands[:2] == ['make book', 'make test'], (
        'README must start with the two set-up commands'
    )


def test_quarto_site_needs_no_cdn_and_has_dark_mode():
    import yaml

    html = yaml.safe_load((ROOT / 'nbs' / '_quarto.yml').read_text())['format']['html']
    assert html['html-math-method'] == 'mathml', 'maths must not load a renderer from a CDN'
    assert set(html['theme']) == {'light', 'dark'}, 'the Quarto site needs a dark theme too'


def test_every_chapter_has_a_colab_badge():
    url = 'https://colab.research.google.com/github/bigmodel-book/bigmodel-book/blob/main/nbs/'
    assert (ROOT / 'nbs' / 'colab-badge.svg').exists()
    missing = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        text = nb.read_text(encoding='utf-8')
        if (
            nb.name != '98_glossary.ipynb'
            and f'[![Open in Colab](colab-badge.svg)]({url}{nb.name})' not in text
        ):
            missing.append(nb.name)
    assert not missing, f'notebooks without the Colab badge (run the badge step): {missing}'


def test_every_plot_is_in_the_committed_outputs():
    "A cell that shows a figure keeps its picture (a run with MPLBACKEND=Agg drops it silently)."
    missing = []
    for nb in sorted((ROOT / 'nbs').glob('*.ipynb')):
        doc = json.loads(nb.read_text(encoding='utf-8'))
        for i, c in enumerate(doc['cells']):
            if c['cell_type'] != 'code' or 'plt.show()' not in ''.join(c['source']):
                continue
            if not any('image/png' in o.get('data', {}) for o in c.get('outputs', [])):
                missing.append(f'{nb.name} cell {i}')
    assert not missing, (
        f'figures missing from the committed outputs (re-run without MPLBACKEND=Agg): {missing}'
    )


def test_solutions_are_collapsed_and_open_on_click(site, browser):
    "An exercise solution (markdown, code and output) is hidden until its summary is clicked."
    external = []
    page = open_page(browser, site, 'core.html', external, viewport={'width': 1300, 'height': 900})
    first = page.locator('details.callout-tip').first
    assert page.locator('details.callout-tip').count() >= 4
    assert first.evaluate('d => d.open') is False
    assert 'Show solution to exercise 1' in first.locator('summary').inner_text()
    code = first.locator('.input_area .highlight').first
    assert code.count() == 1 and not code.is_visible(), 'a solution shows its code unopened'
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / 'solution-closed.png'))
    first.locator('summary').click()
    assert first.evaluate('d => d.open') and code.is_visible()
    assert first.locator('.output_area').count() >= 1, 'the solution lost its output'
    page.screenshot(path=str(SHOTS / 'solution-open.png'))
    answers = page.locator('details.callout-note')
    assert answers.count() >= 5 and 'Show answer' in answers.first.inner_text()
    page.context.close()
    assert not external
