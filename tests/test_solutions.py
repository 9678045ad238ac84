"""Every exercise has a solution and every chapter a self-check (issue 20).

The convention (nbs/00_intro.ipynb, "How to read the exercises and solutions"): after
`## Exercises` (a numbered list) comes `## Solutions`; each solution opens with a markdown cell
`::: {.callout-tip collapse="true"}` whose first heading is `### Solution to exercise N`, may hold
code cells, and closes with a markdown `:::`. `## Self-check` asks 5-10 bold-numbered questions
(`**1.**`), each followed by a collapsed callout `title="Answer"`. Both sites show the callouts
collapsed (Quarto natively, tools/offline_site.py as <details>).

COVERED lists the chapters done so far; it grows until it is every chapter notebook, and the last
test says how many exercises each chapter has, covered or not. Reads .ipynb JSON only."""

import json, re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'

# the chapters whose exercises have solutions; add each chapter as its solutions land, until
# this is every notebook with an `## Exercises` section (then COVERED = chapters())
COVERED = [
    '00_intro.ipynb',
    '01_core.ipynb',
    '01a_results.ipynb',
    '02_data.core.ipynb',
    '02a_data.external.ipynb',
    '03_train.learner.ipynb',
    '04_train.callbacks.ipynb',
    '05_train.checkpoint.ipynb',
    '10_vision.conv.ipynb',
    '12_vision.inspect.ipynb',
    '20_sequence.cells.ipynb',
    '21_sequence.forecast.ipynb',
    '22_sequence.charlm.ipynb',
    '23_sequence.seq2seq.ipynb',
    '30_gan.game.ipynb',
    '31_gan.dcgan.ipynb',
    '40_speech.data.ipynb',
    '41_speech.kws.ipynb',
    '50_text.tokenize.ipynb',
    '51_text.attention.ipynb',
    '52_text.classify.ipynb',
    '53_text.mining.ipynb',
    '54_text.gpt.ipynb',
    '55_text.scaling.ipynb',
    '60_recsys.data.ipynb',
    '61_recsys.models.ipynb',
    '62_recsys.side.ipynb',
    '70_lifecycle.tune.ipynb',
    '71_lifecycle.finetune.ipynb',
    '72_lifecycle.distill.ipynb',
    '73_lifecycle.compress.ipynb',
    '74_lifecycle.export.ipynb',
    '75_lifecycle.serve.ipynb',
    '76_lifecycle.distributed.ipynb',
    '78_lifecycle.batching.ipynb',
    '80_scale.memory.ipynb',
    '81_scale.moe.ipynb',
    '82_scale.fsdp.ipynb',
    '83_trust.privacy.ipynb',
    '84_trust.federated.ipynb',
    '85_trust.attacks.ipynb',
    '86_apps.finance.ipynb',
    '88_apps.anomaly.ipynb',
    '90_cli.core.ipynb',
    '91_cli.commands.ipynb',
]

OPEN = re.compile(r'^:::+\s*\{\s*\.callout-\w+[^}]*collapse\s*=\s*"?true[^}]*\}\s*$', re.M)
SOLUTION = re.compile(r'^#{1,6}\s+Solution to exercise (\d+)\s*$', re.M)


def cells(nb: str) -> list[dict]:
    return json.loads((NBS / nb).read_text(encoding='utf-8'))['cells']


def source(c: dict) -> str:
    return ''.join(c['source'])


def chapters() -> list[str]:
    "Every notebook with an `## Exercises` section."
    return sorted(
        p.name
        for p in NBS.glob('*.ipynb')
        if any(
            re.search(r'^## Exercises', source(c), re.M)
            for c in cells(p.name)
            if c['cell_type'] == 'markdown'
        )
    )


def exercises(nb: str) -> list[int]:
    "The numbers of the exercise list under `## Exercises`."
    for c in cells(nb):
        text = source(c)
        if c['cell_type'] == 'markdown' and (m := re.search(r'^## Exercises\s*$', text, re.M)):
            body = re.split(r'^## ', text[m.end() :], flags=re.M)[0]
            return [int(n) for n in re.findall(r'^(\d+)\. ', body, re.M)]
    return []


def solutions(nb: str) -> dict[int, list[dict]]:
    "Exercise number -> the cells of its solution (the opening markdown cell to the closing :::)."
    found, current, depth = {}, None, 0
    for c in cells(nb):
        text = source(c)
        if c['cell_type'] == 'markdown':
            m = SOLUTION.search(text)
            if m and OPEN.search(text):
                current, depth = int(m.group(1)), 0
                found[current] = []
            if current is not None:
                found[current].append(c)
                opens = len(re.findall(r'^:::+\s*\{', text, re.M))
                closes = len(re.findall(r'^:::+\s*$', text, re.M))
                depth += opens - closes
                if depth <= 0 and closes:
                    current = None
        elif current is not None:
            found[current].append(c)
    return found


def self_check(nb: str) -> tuple[int, int]:
    "(questions, answers) of the `## Self-check` section."
    text = '\n'.join(source(c) for c in cells(nb) if c['cell_type'] == 'markdown')
    m = re.search(r'^## Self-check\s*$(.*?)(?=^## |\Z)', text, re.M | re.S)
    if not m:
        return 0, 0
    body = m.group(1)
    answers = re.findall(r'^:::+\s*\{[^}]*collapse\s*=\s*"?true[^}]*title="Answer', body, re.M)
    return len(re.findall(r'^\*\*\d+\.\*\*', body, re.M)), len(answers)


def test_covered_are_chapters():
    assert set(COVERED) <= set(chapters()), set(COVERED) - set(chapters())


@pytest.mark.parametrize('nb', COVERED)
def test_every_exercise_has_a_solution(nb):
    numbers, found = exercises(nb), solutions(nb)
    assert numbers == list(range(1, len(numbers) + 1)) and numbers, f'{nb}: exercises {numbers}'
    missing = [n for n in numbers if n not in found]
    assert not missing, f'{nb}: exercises without a "Solution to exercise N" callout: {missing}'
    extra = sorted(set(found) - set(numbers))
    assert not extra, f'{nb}: solutions to exercises that do not exist: {extra}'


@pytest.mark.parametrize('nb', COVERED)
def test_solution_cells_ran_without_error(nb):
    """No solution cell raised, and each solution's last code cell (its check) carries outputs of
    the committed run. Cells before it may only define or import: tools/run_solutions.py writes
    outputs only when every cell ran, so a last cell with outputs means all of them ran."""
    bad = []
    for n, sol in solutions(nb).items():
        code = [c for c in sol if c['cell_type'] == 'code']
        if code and not code[-1].get('outputs'):
            bad.append(f'solution {n}: its last code cell has no output (did it run?)')
        if any(o.get('output_type') == 'error' for c in code for o in c.get('outputs', [])):
            bad.append(f'solution {n}: a cell that raised')
    assert not bad, f'{nb}: {bad}'


@pytest.mark.parametrize('nb', COVERED)
def test_self_check(nb):
    questions, answers = self_check(nb)
    assert 5 <= questions <= 10, f'{nb}: the self-check has {questions} questions, not 5-10'
    assert answers == questions, f'{nb}: {questions} questions but {answers} collapsed answers'


def test_exercise_counts_are_reported(capsys):
    "How many exercises each chapter has, and how many solutions so far (printed with -s)."
    rows = [(nb, len(exercises(nb)), len(solutions(nb))) for nb in chapters()]
    with capsys.disabled():
        print('\nexercises / solutions per chapter:')
        for nb, n_ex, n_sol in rows:
            print(f'  {nb:36s} {n_ex} / {n_sol}' + ('' if nb in COVERED else '  (not covered)'))
        print(f'  total: {sum(r[1] for r in rows)} / {sum(r[2] for r in rows)}')
    assert all(n_ex > 0 for _, n_ex, _ in rows)
