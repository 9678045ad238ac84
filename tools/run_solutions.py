"""Run a chapter's solutions on their own and keep their outputs in the notebook (issue 20).

A solution depends only on the chapter's imports and its exported definitions, so a reader can
run it right after the chapter's set-up cells, and so can this tool: it executes the notebook's
import cells and `#| export` cells, then every code cell after `## Solutions`, in one kernel,
and writes the solution cells' outputs back into the notebook. The chapter's own outputs stay
those of its standard-scale run; `make test` still runs every notebook from top to bottom.

    python tools/run_solutions.py nbs/10_vision.conv.ipynb            # standard scale, writes
    python tools/run_solutions.py --quick --dry nbs/10_vision.conv.ipynb  # quick, writes nothing
"""

import argparse, ast, copy, os, re, sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

SETUP_LINE = re.compile(r'^\s*(import\s|from\s\S+\s+import\s|#|%|$)')


def is_setup(source: str) -> bool:
    "An import-only cell, or one whose definitions the chapter exports."
    if re.match(r'^#\|\s*export', source):
        return True
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: judge line by line
        return all(SETUP_LINE.match(line) for line in source.splitlines())
    return all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in tree.body)


def solution_start(nb) -> int:
    "Index of the `## Solutions` heading cell."
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'markdown' and re.search(r'^## Solutions\s*$', c.source, re.M):
            return i
    raise SystemExit('No `## Solutions` heading: nothing to run.')


def plan(nb) -> tuple[list[int], list[int]]:
    "(set-up cell indices, solution cell indices), in notebook order."
    start = solution_start(nb)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == 'code']
    setup = [i for i in code if i < start and is_setup(nb.cells[i].source)]
    return setup, [i for i in code if i > start]


def run(path: Path, quick: bool, dry: bool, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    setup, sols = plan(nb)
    if not sols:
        raise SystemExit(f'{path}: no code cells after `## Solutions`.')
    cells = [copy.deepcopy(nb.cells[i]) for i in setup + sols]
    scratch = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    # the kernel inherits this environment: inline plots (no Agg), and the scale asked for
    os.environ.pop('MPLBACKEND', None)
    os.environ.pop('BMB_QUICK', None)
    if quick:
        os.environ['BMB_QUICK'] = '1'
    where = {'metadata': {'path': str(path.parent)}}
    client = NotebookClient(scratch, timeout=timeout, kernel_name='python3', resources=where)
    began = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        raise SystemExit(f'{path}: a cell failed; nothing written.\n{e}') from None
    seconds = time.perf_counter() - began
    for i, cell in zip(sols, scratch.cells[len(setup) :]):
        nb.cells[i].outputs = cell.outputs
        nb.cells[i].execution_count = None
    if not dry:
        nbformat.write(nb, path)
    return seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('notebooks', nargs='+', type=Path)
    p.add_argument('--quick', action='store_true', help='run at quick scale (BMB_QUICK=1)')
    p.add_argument('--dry', action='store_true', help='run, but do not write the notebook')
    p.add_argument('--timeout', type=int, default=1800, help='seconds per cell')
    args = p.parse_args(argv)
    for path in args.notebooks:
        seconds = run(path, args.quick, args.dry, args.timeout)
        scale = 'quick' if args.quick else 'standard'
        kept = ' (not written)' if args.dry else ''
        print(f'{path}: solutions ran at {scale} scale in {seconds:.1f} s{kept}')


if __name__ == '__main__':
    sys.exit(main())
