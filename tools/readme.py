"""Copy the front page's overview (nbs/index.ipynb: "What this book is" through the map of the
book) into README.md, between the markers <!-- overview:start --> and <!-- overview:end -->, so the
README never drifts from the book.

usage: python tools/readme.py [--check]   (--check exits 1 if README.md is out of date)
"""

import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = '<!-- overview:start -->', '<!-- overview:end -->'
SECTIONS = ('## What this book is', '## Who it is for', '## Map of the book')


def overview() -> str:
    "The overview sections of index.ipynb, as Markdown with links pointing into nbs/."
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text(encoding='utf-8'))
    cells = [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown']
    keep = [c for c in cells if c.lstrip().startswith(SECTIONS)]
    text = '\n\n'.join(keep).replace('## ', '### ')
    return re.sub(r'\]\((\w[\w-]*\.ipynb)\)', r'](nbs/\1)', text).strip()


def render(readme: str) -> str:
    if START not in readme or END not in readme:
        raise SystemExit(f'README.md lacks the markers {START} and {END}')
    head, rest = readme.split(START, 1)
    return f"{head}{START}\n{overview()}\n{END}{rest.split(END, 1)[1]}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = ROOT / 'README.md'
    old = path.read_text(encoding='utf-8')
    new = render(old)
    if '--check' in argv:
        if old != new:
            print('README.md is out of date: run python tools/readme.py')
            return 1
        return 0
    path.write_text(new, encoding='utf-8')
    return 0


if __name__ == '__main__':
    sys.exit(main())
