"""Build the book's site into _docs/ without Quarto and without a network.

The notebooks go through nbdev's own processing (`nbdev-proc-nbs`: hidden cells dropped,
`show_doc` rendered, front matter made), then nbconvert's HTML exporter renders each one. This
script only adds what Quarto would: the page shell with the sidebar of parts, a contents list per
page, full-text search that works from file:// (the index is a script, not a fetched file), dark
mode, copy buttons, a menu button on phones, maths typeset to MathML at build time (latex2mathml;
no renderer to load), links between notebooks rewritten to pages, and the cell options nbdev
leaves behind (`#| echo: false`, `#| output: asis`), and Quarto callouts (`::: {.callout-tip
collapse="true"}` ... `:::`, which may open in one markdown cell and close in a later one, code
cells between): a collapsed one becomes a `<details>` element, closed until clicked, so exercise
solutions and self-check answers stay hidden as on the Quarto site. The shell's CSS and
JavaScript are in tools/site/.

usage: python tools/offline_site.py [--out _docs] [--no-proc]
"""

from __future__ import annotations

import argparse, html, json, re, shutil, sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat, yaml
from latex2mathml.converter import convert as latex_to_mathml
from nbconvert import HTMLExporter
from pygments.formatters import HtmlFormatter

ROOT = Path(__file__).resolve().parent.parent
NBS, PROC, ASSETS = ROOT / 'nbs', ROOT / '_proc', ROOT / 'tools' / 'site'

# -------------------------------------------------------------------------------------------- maths
_CODE = re.compile(r'(```.*?```|~~~.*?~~~|`[^`\n]+`)', re.S)
_DISPLAY = re.compile(r'\$\$(.+?)\$\$', re.S)
_INLINE = re.compile(r'(?<![\\$\w])\$(?![\s$])((?:\\\$|[^$\n])+?)(?<![\s\\])\$(?![\w$])')


class MathErrors(list):
    "LaTeX snippets that latex2mathml could not convert."


MATH_ERRORS = MathErrors()


_TAG = re.compile(r'\\tag\{([^}]*)\}')
# operator names that latex2mathml leaves without the thin space TeX puts after them
_FUNCTION = re.compile(
    r'(<mi>(?:log|ln|exp|sin|cos|tan|tanh|det|dim|lg)</mi>)(?!<mo stretchy="false">&#x00028;)'
)
_THIN = '<mspace width="0.1667em"></mspace>'


def _mathml(tex: str, display: bool) -> str:
    try:
        out = latex_to_mathml(tex.strip(), display='block' if display else 'inline')
    except Exception as e:  # keep the page readable, and report it
        MATH_ERRORS.append(f'{tex!r}: {type(e).__name__}: {e}')
        return f'<code class="math-error">{html.escape(tex)}</code>'
    return _FUNCTION.sub(lambda m: m.group(1) + _THIN, out.replace('\n', ''))


def _display(tex: str) -> str:
    "A display formula; a \\tag{n} becomes an equation number at the right margin."
    tag = _TAG.search(tex)
    number = f'<span class="eqno">({html.escape(tag.group(1))})</span>' if tag else ''
    body = _mathml(_TAG.sub('', tex), True)
    return f'\n\n<div class="math-display">{body}{number}</div>\n\n'


def typeset_math(md: str) -> str:
    "Replace $...$ and $$...$$ outside code with MathML."
    parts = _CODE.split(md)
    for i in range(0, len(parts), 2):
        s = _DISPLAY.sub(lambda m: _display(m.group(1)), parts[i])
        parts[i] = _INLINE.sub(lambda m: _mathml(m.group(1), False), s)
    return ''.join(parts)


# -------------------------------------------------------------------------------------------- pages
def read_front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in the first raw cell."
    for c in nb.cells[:2]:
        if c.cell_type == 'raw' and c.source.startswith('---'):
            return yaml.safe_load(c.source.strip().strip('-')) or {}
    return {}


def page_name(nb_path: Path, fm: dict) -> str:
    return fm.get('output-file') or (
        'index.html' if nb_path.stem == 'index' else nb_path.stem + '.html'
    )


def sidebar_entries() -> list[tuple[str | None, list[str]]]:
    "[(section title or None, [notebook file names])] from nbs/sidebar.yml."
    contents = yaml.safe_load((NBS / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    out = []
    for item in contents:
        if isinstance(item, str):
            out.append((None, [item]))
        else:
            out.append(
                (
                    item['section'],
                    [c if isinstance(c, str) else c['href'] for c in item['contents']],
                )
            )
    return out


_LINK = re.compile(r'\]\(([^)\s#]+?\.ipynb)(#[^)]*)?\)')
_HREF = re.compile(r'href="([^"#]+?\.ipynb)(#[^"]*)?"')


def rewrite_links(text: str, pages: dict[str, str]) -> str:
    text = _LINK.sub(
        lambda m: '](' + pages.get(Path(m.group(1)).name, m.group(1)) + (m.group(2) or '') + ')',
        text,
    )
    return _HREF.sub(
        lambda m: (
            'href="' + pages.get(Path(m.group(1)).name, m.group(1)) + (m.group(2) or '') + '"'
        ),
        text,
    )


_FENCE_OPEN = re.compile(r'^:::+\s*\{\s*\.callout-(\w+)([^}]*)\}\s*$')
_FENCE_CLOSE = re.compile(r'^:::+\s*$')
_TITLE_ATTR = re.compile(r'title\s*=\s*"([^"]*)"')
_HEADING_LINE = re.compile(r'^#{1,6}\s+(.*?)\s*$')


def _marker(html_text: str):
    "A cell that the template writes out as raw HTML, outside any cell wrapper."
    return nbformat.v4.new_raw_cell('', metadata={'book_html': html_text})


def _callout_open(kind: str, attrs: str, lines: list[str]) -> str:
    "The opening HTML of a callout; a heading first in its body is its title (as in Quarto)."
    m = _TITLE_ATTR.search(attrs)
    title = m.group(1) if m else ''
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if not title and first is not None and (h := _HEADING_LINE.match(lines[first])):
        title = h.group(1)
        del lines[first]
    title = title or kind.capitalize()
    if re.search(r'collapse\s*=\s*"?true', attrs):
        summary = 'Show ' + title[:1].lower() + title[1:]
        return (
            f'<details class="callout callout-{kind}"><summary>{html.escape(summary)}</summary>'
            '<div class="callout-body">'
        )
    return (
        f'<div class="callout callout-{kind}"><div class="callout-title">{html.escape(title)}'
        '</div><div class="callout-body">'
    )


def split_callouts(cells: list) -> list:
    "Cut markdown cells at callout fences; each fence becomes a raw-HTML marker cell."
    out, stack = [], []
    for c in cells:
        if c.cell_type != 'markdown' or ':::' not in c.source:
            out.append(c)
            continue
        lines, chunk, in_code = c.source.split('\n'), [], False
        pending = None  # an opening fence waiting for its title from the lines after it

        def flush():
            nonlocal pending
            if pending is not None:
                kind, attrs = pending
                out.append(_marker(_callout_open(kind, attrs, chunk)))
                pending = None
            if any(line.strip() for line in chunk):
                out.append(nbformat.v4.new_markdown_cell('\n'.join(chunk)))
            chunk.clear()

        for line in lines:
            if line.lstrip().startswith(('```', '~~~')):
                in_code = not in_code
            if not in_code and (m := _FENCE_OPEN.match(line.strip())):
                flush()
                pending = (m.group(1), m.group(2))
                stack.append('details' if 'collapse' in m.group(2) else 'div')
            elif not in_code and stack and _FENCE_CLOSE.match(line.strip()):
                flush()
                out.append(_marker(f'</div></{stack.pop()}>'))
            else:
                chunk.append(line)
        flush()
    if stack:
        raise ValueError(f'{len(stack)} callout(s) opened with ::: but never closed')
    return out


_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def prepare(nb, pages: dict[str, str]):
    "Apply Quarto cell options, typeset maths and rewrite links, in place."
    keep = []
    for c in split_callouts(nb.cells):
        if c.cell_type == 'raw':
            if 'book_html' in c.metadata:
                keep.append(c)
            continue
        if c.cell_type == 'markdown':
            if c.source.startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'):
                continue
            c.source = typeset_math(rewrite_links(c.source, pages))
            keep.append(c)
            continue
        c.metadata.pop('execution', None)
        lines, opts = c.source.splitlines(), {}
        while lines and (m := _DIRECTIVE.match(lines[0])):
            opts[m.group(1)] = m.group(2).strip('"\'')
            lines.pop(0)
        c.source = '\n'.join(lines).strip()
        c.metadata['echo'] = opts.get('echo', 'true') != 'false' and bool(c.source)
        c.metadata['fold'] = opts.get('code-fold') == 'show'
        for o in c.get('outputs', []):
            if 'text/markdown' in o.get('data', {}):
                o['data']['text/markdown'] = typeset_math(
                    rewrite_links(o['data']['text/markdown'], pages)
                )
                o['data'].pop('text/plain', None)
            if (
                o.get('output_type') == 'stream'
                and o.get('name') == 'stderr'
                and not o.get('text', '').strip()
            ):
                o['text'] = ''
        c.outputs = [
            o
            for o in c.get('outputs', [])
            if not (o.get('output_type') == 'stream' and not o.get('text'))
        ]
        if c.metadata['echo'] or c.outputs:
            keep.append(c)
    nb.cells = keep


CELL_TEMPLATE = r"""{%- extends 'basic/index.html.j2' -%}
{% block any_cell %}
{%- if cell.metadata.get('book_html') -%}{{ cell.metadata.book_html }}
{%- else -%}{{ super() }}{%- endif -%}
{% endblock any_cell %}
{% block input_group -%}
{%- if cell.metadata.get('echo', True) -%}
{%- if cell.metadata.get('fold') -%}
<details class="fold" open><summary>Exported source</summary>{{ super() }}</details>
{%- else -%}{{ super() }}{%- endif -%}
{%- endif -%}
{%- endblock input_group %}
{% block in_prompt %}{% endblock in_prompt %}
{% block empty_in_prompt %}{% endblock empty_in_prompt %}
{% block output_area_prompt %}{% endblock output_area_prompt %}
"""


def exporter() -> HTMLExporter:
    tpl_dir = ROOT / '_proc' / '_tpl'
    tpl_dir.mkdir(parents=True, exist_ok=True)
    (tpl_dir / 'book.html.j2').write_text(CELL_TEMPLATE)
    ex = HTMLExporter(template_name='basic', extra_template_paths=[str(tpl_dir)])
    ex.template_file = 'book.html.j2'
    ex.exclude_anchor_links = False
    return ex


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} – {book}</title>
<script>{theme_script}</script>
<link rel="stylesheet" href="site.css"><link rel="stylesheet" href="styles.css">
<script defer src="search-index.js"></script><script defer src="site.js"></script></head>
<body><header class="topbar">
<button id="menu-toggle" type="button" aria-expanded="false"
aria-controls="sidebar">☰ Chapters</button>
<a class="book" href="index.html">{book}</a><span class="spacer"></span>
<div class="searchbox" role="search"><input id="search" type="search" placeholder="Search the book"
aria-label="Search the book" autocomplete="off"><ul id="hits" hidden></ul></div>
<button id="theme-toggle" type="button" aria-label="Switch dark mode">◐</button>
<a class="repo" href="{repo}">source on GitHub</a></header>
<div class="layout"><nav class="sidebar" id="sidebar" aria-label="Parts and chapters">{nav}</nav>
<main class="content"><h1 class="title">{title}</h1>{description}{toc_inline}{body}
<nav class="pager">{prev}{next}</nav></main>{toc}</div></body></html>
"""

# before the first paint: the reader's choice, else the system's
THEME_SCRIPT = (
    "try{var t=localStorage.getItem('book-theme')}catch(e){}"
    "document.documentElement.dataset.theme=t||"
    "(matchMedia('(prefers-color-scheme: dark)').matches?'dark':'light')"
)

_HEADING = re.compile(r'<h([23]) id="([^"]+)"[^>]*>(.*?)</h\1>', re.S)
_TAGS = re.compile(r'<[^>]+>')


def headings(body: str) -> list[tuple[int, str, str]]:
    "(level, id, text) of the page's h2 and h3 headings."
    out = []
    for level, ident, inner in _HEADING.findall(body):
        text = html.unescape(_TAGS.sub('', inner)).replace('¶', '').strip()
        out.append((int(level), ident, text))
    return out


def toc_html(body: str) -> tuple[str, str]:
    "The page's contents list: a side column on wide screens, a folded box on narrow ones."
    found = headings(body)
    if len(found) < 2:
        return '', ''
    links = ''.join(
        f'<li class="h{level}"><a href="#{ident}">{html.escape(text)}</a></li>'
        for level, ident, text in found
    )
    title = 'On this page'
    side = f'<nav class="toc" aria-label="{title}"><h2>{title}</h2><ul>{links}</ul></nav>'
    inline = f'<details class="toc-inline"><summary>{title}</summary><ul>{links}</ul></details>'
    return side, inline


class SectionText(HTMLParser):
    "The text of a page cut at its headings: [(heading id, heading, text)], maths left out."

    SKIP = {'script', 'style', 'math', 'button'}

    def __init__(self):
        super().__init__()
        self.sections, self.skipping, self.in_heading = [['', '', []]], 0, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in ('h2', 'h3') and a.get('id'):
            self.sections.append([a['id'], '', []])
            self.in_heading = True

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in ('h2', 'h3'):
            self.in_heading = False

    def handle_data(self, data):
        if self.skipping or data.strip() == '¶':
            return
        target = self.sections[-1]
        if self.in_heading:
            target[1] += data
        else:
            target[2].append(data)


def search_entries(url: str, title: str, body: str, limit: int = 3000) -> list[dict]:
    "Search-index entries of one page, one per section."
    parser = SectionText()
    parser.feed(body)
    out = []
    for ident, heading, chunks in parser.sections:
        text = re.sub(r'\s+', ' ', ' '.join(chunks)).strip()[:limit]
        if text or heading:
            href = url + (f'#{ident}' if ident else '')
            out.append({'url': href, 'title': title, 'heading': heading.strip(), 'text': text})
    return out


def write_search_index(out: Path, entries: list[dict]):
    "search-index.js: a script, so that the browser loads it from file:// without a server."
    data = json.dumps(entries, ensure_ascii=False, separators=(',', ':'))
    (out / 'search-index.js').write_text(f'window.BOOK_INDEX={data};\n', encoding='utf-8')


def write_assets(out: Path):
    "The shell's CSS (with code highlighting for light and dark) and JavaScript."
    light = HtmlFormatter(style='friendly').get_style_defs('.highlight')
    dark = HtmlFormatter(style='github-dark').get_style_defs('[data-theme=dark] .highlight')
    css = (ASSETS / 'site.css').read_text()
    (out / 'site.css').write_text(css + light + '\n' + dark + '\n')
    shutil.copy(ASSETS / 'site.js', out / 'site.js')
    shutil.copy(NBS / 'styles.css', out / 'styles.css')


def nav_html(entries, titles: dict[str, str], pages: dict[str, str], current: str) -> str:
    out = []
    for section, items in entries:
        links = ''.join(
            f'<li{" class=active" if nb == current else ""}>'
            f'<a href="{pages[nb]}">{html.escape(titles[nb])}</a></li>'
            for nb in items
            if nb in pages
        )
        heading = '<h2>' + html.escape(section) + '</h2>' if section else ''
        out.append(f'<div class="part">{heading}<ul>{links}</ul></div>')
    return ''.join(out)


def build(out: Path, run_proc: bool = True) -> list[Path]:
    # nbdev's own processing, as `nbdev-proc-nbs` does it, but without its attempt to install Quarto
    if run_proc:
        from nbdev.serve import proc_nbs

        proc_nbs(str(NBS), n_workers=2, force=True)
    entries = sidebar_entries()
    nb_files = sorted(p.name for p in NBS.glob('*.ipynb'))
    in_sidebar = [nb for _, items in entries for nb in items]
    missing = [nb for nb in nb_files if nb not in in_sidebar]
    if missing:
        entries.append(('More', missing))
    notebooks = {nb: nbformat.read(PROC / nb, as_version=4) for nb in nb_files}
    fms = {nb: read_front_matter(notebooks[nb]) for nb in nb_files}
    pages = {nb: page_name(Path(nb), fms[nb]) for nb in nb_files}
    titles = {nb: str(fms[nb].get('title', Path(nb).stem)).replace('`', '') for nb in nb_files}
    order = [nb for _, items in entries for nb in items if nb in pages]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_assets(out)
    for f in NBS.rglob('*'):
        if (
            f.suffix.lower() in ('.png', '.jpg', '.jpeg', '.svg', '.gif', '.wav')
            and '_proc' not in f.parts
        ):
            dest = out / f.relative_to(NBS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    ex, written, index = exporter(), [], []
    repo = 'https://github.com/bigmodel-book/bigmodel-book'
    for i, nb in enumerate(order):
        book = notebooks[nb]
        prepare(book, pages)
        body, _ = ex.from_notebook_node(book)
        desc = fms[nb].get('description')
        toc, toc_inline = toc_html(body)
        index += search_entries(pages[nb], titles[nb], body)
        prev = (
            f'<a href="{pages[order[i - 1]]}">← {html.escape(titles[order[i - 1]])}</a>'
            if i > 0
            else '<span></span>'
        )
        nxt = (
            f'<a href="{pages[order[i + 1]]}">{html.escape(titles[order[i + 1]])} →</a>'
            if i + 1 < len(order)
            else '<span></span>'
        )
        page = PAGE.format(
            title=html.escape(titles[nb]),
            book='Big Models, Hands On',
            repo=repo,
            body=body,
            description=f'<p class="description">{typeset_math(html.escape(desc))}</p>'
            if desc
            else '',
            nav=nav_html(entries, titles, pages, nb),
            toc=toc,
            toc_inline=toc_inline,
            theme_script=THEME_SCRIPT,
            prev=prev,
            next=nxt,
        )
        (out / pages[nb]).write_text(page, encoding='utf-8')
        written.append(out / pages[nb])
    write_search_index(out, index)
    (out / '.nojekyll').touch()
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', type=Path, default=ROOT / '_docs')
    ap.add_argument(
        '--no-proc', action='store_true', help='reuse _proc/ instead of running nbdev-proc-nbs'
    )
    args = ap.parse_args(argv)
    pages = build(args.out, run_proc=not args.no_proc)
    print(f"wrote {len(pages)} pages to {args.out}; open {args.out / 'index.html'}")
    if MATH_ERRORS:
        print(
            f"{len(MATH_ERRORS)} formula(s) could not be typeset:",
            *MATH_ERRORS,
            sep='\n  ',
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
