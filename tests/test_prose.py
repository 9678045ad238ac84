"""Prose numbers are checked: a measured result typed into a notebook's markdown must be what that
notebook's run printed or recorded (issue 22).

What it checks. In every notebook's markdown cells, a *result number* is a number written with a
decimal point (0.983, 3.10, 1.57x), or a percentage (98.5%, 54 %), in a sentence that names a
result: a metric (accuracy, error, loss, bpc / bits per character, perplexity, RMSE, MAE, MAPE,
HR@10, NDCG, recall, precision, AUC, F1, WER, CER, IoU, mAP, coverage ...) or a speed (x faster,
speed-up, ms, latency, throughput). Each must equal a number in the same notebook's committed
code-cell outputs (text, tables, markdown; not images) or in the rows of its part's
`results/*.json`, up to the rounding the prose uses: the measured value rounded to the prose's
decimals, or its percentage (0.9849 is "0.985", "98.5%" and "98%"), or a percentage written as a
fraction. A speed-up written as "N x" may also be the ratio of two numbers of one output.

What it ignores: headings; code spans and maths (`...`, $...$, $$...$$); link targets and link
texts that start with a section number ("[2.2 From LeNet-5](...)"); section and equation numbers
("section 3.1", "equation 2", "6.2 and 6.5"); versions (PyTorch 2.9, 2.14.1); integers without %
(counts, sizes and years); sentences that quote a source (et al., a year in parentheses or after
a name, reported, published, paper, according to, the original ...); hyper-parameters and settings
(lr / learning rate, epochs, batch, seed, dimensions, width, dropout, weight decay, momentum,
temperature, strength, rate, threshold, margin, goal) when one of these words stands just before
the number; and the exercises (they ask, they do not report).

Known mismatches are in ALLOWED below, each with the chapter re-run that fixes it; an allowed
number that no longer appears unmatched fails the test, so fixed entries must be removed.
Reads .ipynb JSON only; executes nothing.
"""

import json, re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'

# notebook number prefix -> the results files its part writes (as in test_results.py)
PARTS = {
    r'0[1-9]': ['foundations'],
    r'1\d': ['vision', 'vision_detection', 'vision_retrieval'],
    r'2\d': ['sequence'],
    r'3\d': ['gan'],
    r'4\d': ['speech'],
    r'5\d': ['text'],
    r'6\d': ['recsys'],
    r'7[0-3]': ['lifecycle'],
    r'7[4-9]': ['lifecycle_deploy'],
    r'8[0-2]': ['scale'],
    r'8[3-5]': ['trust'],
    r'8[6-9]': ['apps'],
}

# Known prose numbers that no output of their notebook shows: the to-do list of issue 22. Each
# must still be found unmatched by this test: when a re-run fixes one, delete it here.
ALLOWED: dict[str, list[tuple[str, str]]] = {
}

# Numbers the rule takes for results but that are worked examples of a formula, not measurements.
# Also asserted to be still there, so a changed sentence is read again.
NOT_RESULTS: dict[str, list[tuple[str, str]]] = {
    '40_speech.data.ipynb': [
        ('1.037', 'an arbitrary resampling factor in an example'),
        ('0.025', 'the step speed factors are rounded to, a setting'),
    ],
    '60_recsys.data.ipynb': [('0.29', 'NDCG discount at rank 10, 1/log2(11), worked by hand')],
    '13_vision.detect.ipynb': [('0.25', 'AP of a hand-worked two-object example')],
}

RESULT_WORDS = re.compile(
    r'accura|\berrors?\b|\bloss|\bbpc\b|bits? per char|perplexit|\brmse\b|\bmae\b|\bmape\b|'
    r'\bhr@|hit rate|\bhits?\b|\bndcg|\brecall|\bprecision|\bauc\b|\bf1\b|macro|\bwer\b|\bcer\b|'
    r'word error|character error|\biou\b|\bmap\b|coverage|\bmodes?\b|\bscor|'
    r'faster|slower|speed-?up|\d\s*[x×]|\btimes\b|\bms\b|millisecond|latency|throughput|'
    r'per second|\bfid\b|\bbleu\b|exact match|r²|r\^2|explained variance|correlation|fréchet|'
    r'\breach|\bbeats?\b|\bbeaten\b|\bagainst\b|\blead\b|\bgains?\b|\blost\b|\bwins?\b|\bwinner|'
    r'\bties?\b|\bahead\b|\bbehind\b|\bbetter\b|\bworse\b|\bimprov|\bdrops?\b|\bfalls?\b|\bpoints\b|'
    r'\bbest\b|\bweakest\b|\bstrongest\b|\bend(?:s|ed)? (?:at|up|close)|'
    r'\bstopped at\b|\bcomes? out',
    re.I,
)
REFERENCE = re.compile(
    r'et al\b|\(\s*(?:19|20)\d\d\s*\)|\b[A-Z][a-z]+,? (?:19|20)\d\d\b|\breport(?:s|ed)?\b|'
    r'\bpublish|\bpapers?\b|according to|\bquot|\bthe original\b|\bcites?\b',
    re.I,
)
SETTING_BEFORE = re.compile(
    r'(?:\blr|learning[- ]rates?|\brates?|epochs?|batch(?:[- ]size)?|\bbs|seeds?|dim(?:ension)?s?|'
    r'width|dropout|weight[- ]decay|momentum|temperature|strength|threshold|margin|goals?|'
    r'\bgamma|\bbeta|\balpha|\bC|\bp|eps(?:ilon)?|warm-?up|clip|=|<|>|≤|≥)\W{0,3}$',
    re.I,
)
SECTION_BEFORE = re.compile(
    r'(?:section|chapter|part|equation|eq\.|figure|table|step|version|python|pytorch|torch|'
    r'cuda|numpy|onnx|opset|optuna|§|v)\s*$',
    re.I,
)
NUMBER = re.compile(
    r'(?<![\w.@/-])(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)'
    r'(?P<tail>\s?(?:%|percent\b|[x×](?!\w)|-fold|\s?times\b))?(?![\w.]\d)'
)
OUT_NUMBER = re.compile(r'(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d+)?', re.I)


SECTIONS = {
    m[1]
    for nb in NBS.glob('*.ipynb')
    for m in [
        re.match(
            r'#\s+(\d+\.\d+)', json.loads(nb.read_text(encoding='utf-8'))['cells'][0]['source'][0]
        )
    ]
    if m
}
UNIT_AFTER = re.compile(r'^\s?(?:%|points?|bpc|bits|ms\b|s\b|seconds|×|x\b|times|percent)', re.I)
SIZE_AFTER = re.compile(
    r'^\s?(?:million|billion|thousand|[kMG]B\b|GiB|MiB|dB\b|k?Hz\b|degrees|GFLOP|MAC|FLOP)'
)


def part_results(nb: Path) -> list[str]:
    return next((f for pat, f in PARTS.items() if re.match(pat + '_', nb.name)), [])


def clean_markdown(text: str) -> str:
    "Markdown without headings, code, maths, link targets, section-numbered link texts, exercises."
    text = re.split(r'^#+\s*Exercises', text, flags=re.M | re.I)[0]
    text = re.sub(r'```.*?```', ' ', text, flags=re.S)
    text = re.sub(r'`[^`]*`', ' CODE ', text)
    text = re.sub(r'\$\$.*?\$\$', ' MATH ', text, flags=re.S)
    text = re.sub(r'\$[^$]*\$', ' MATH ', text)
    text = re.sub(r'\[\s*\d+(?:\.\d+)*\s[^\]]*\]\([^)]*\)', ' LINK ', text)
    text = re.sub(r'\]\([^)]*\)', ']', text)
    text = re.sub(r'<[^>]+>', ' ', text)
    text = re.sub(r'https?://\S+', ' URL ', text)
    return '\n'.join(line for line in text.split('\n') if not line.lstrip().startswith('#'))


def sentences(text: str) -> list[str]:
    "Sentences and list items and table rows, split so that 0.98 stays one number."
    parts = re.split(r'(?<=[.!?;:])\s+(?=[A-Z(*"“])|\n\s*\n|\n\s*[-*] |\n\s*\d+\. |\n\|', text)
    return [p.strip() for p in parts if p and p.strip()]


def prose_numbers(text: str, with_sentence: bool = False) -> list:
    "The result numbers of one markdown cell, as written (without thousands separators)."
    found = []
    for s in sentences(clean_markdown(text)):
        if not RESULT_WORDS.search(s) or REFERENCE.search(s):
            continue
        for m in NUMBER.finditer(s):
            num, tail = m['num'], (m['tail'] or '').strip()
            before = s[: m.start()]
            if '.' not in num and not tail.startswith(('%', 'percent')):
                continue  # integers: counts, sizes, years
            if SETTING_BEFORE.search(before[-30:]) or SECTION_BEFORE.search(before[-12:]):
                continue
            after = s[m.end() :]
            if SIZE_AFTER.match(after):
                continue  # sizes of data and models: 1.2 million images, a 2.3 GB archive
            if (
                num in SECTIONS
                and not UNIT_AFTER.match(after)
                and not RESULT_WORDS.search(before[-20:])
            ):
                continue  # "the GPT of 6.5", "[3.3]": a section of the book
            if tail.startswith(('%', 'percent')) and re.match(
                r'\s*(?:confidence|interval|CI)', after
            ):
                continue  # "a 95% interval": a level, not a result
            unit = '%' if tail.startswith(('%', 'percent')) else 'x' if tail else ''
            written = num.replace(',', '') + unit
            found.append((s, written) if with_sentence else written)
    return found


def output_text(cell: dict) -> str:
    "The text a code cell printed or returned (HTML tags dropped, images skipped)."
    out = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream':
            out.append(''.join(o.get('text', '')))
        for kind in ('text/plain', 'text/markdown', 'text/html', 'text/latex'):
            if kind in o.get('data', {}):
                out.append(re.sub(r'<[^>]+>', ' ', ''.join(o['data'][kind])))
    return '\n'.join(out)


def json_numbers(x) -> list[float]:
    if isinstance(x, bool):
        return []
    if isinstance(x, (int, float)):
        return [float(x)]
    if isinstance(x, str):
        return [float(v.replace(',', '')) for v in OUT_NUMBER.findall(x)]
    if isinstance(x, dict):
        return [v for k in x.values() for v in json_numbers(k)]
    if isinstance(x, list):
        return [v for k in x for v in json_numbers(k)]
    return []


CITES_CHAPTER = re.compile(r'\b(?:chapter|section|part)\s+\d|\bLINK\b', re.I)


def numbers_in(text: str) -> list[tuple[float, int]]:
    "Each number of a text, with the decimals it was written with."
    out = []
    for v in OUT_NUMBER.findall(text):
        mant = re.split('[eE]', v)[0]
        out.append((float(v.replace(',', '')), len(mant.split('.')[1]) if '.' in mant else 0))
    return out


@lru_cache(maxsize=None)
def measured(nb: Path) -> tuple[dict, tuple]:
    "The notebook's measured numbers (value -> most decimals printed), and its output lines."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    values: dict[float, int] = {}
    lines = []
    for c in cells:
        if c['cell_type'] == 'code':
            for line in output_text(c).split('\n'):
                nums = numbers_in(line)
                lines.append(tuple(v for v, _ in nums))
                for v, d in nums:
                    values[v] = max(values.get(v, 0), d)
    for name in part_results(nb):
        path = ROOT / 'results' / f'{name}.json'
        if path.exists():
            for v in json_numbers(json.loads(path.read_text())['rows']):
                values[v] = 12
    return values, tuple(lines)


@lru_cache(maxsize=None)
def recorded_anywhere() -> dict:
    "The numbers of every chapter's results rows, for prose that quotes another chapter."
    return {
        v: 12
        for path in sorted((ROOT / 'results').glob('*.json'))
        for v in json_numbers(json.loads(path.read_text())['rows'])
    }


def rounds_to(v: float, p: float, decimals: int) -> bool:
    return abs(v - p) <= 0.5 * 10**-decimals + 1e-9


def derived(numbers: list[float]) -> set[float]:
    "Ratios, differences and relative changes of two numbers (and of their complements to 1)."
    xs = set(numbers) | {1 - x for x in numbers if 0 < x < 1}
    out = set()
    for a in xs:
        for b in xs:
            if a != b and b > 0:
                out |= {a / b, abs(a - b), abs(a - b) / b}
    return out


def direct(p: float, d: int, unit: str, nb: Path, elsewhere: bool = False) -> bool:
    "Whether `p` (written with `d` decimals) is a measured number of `nb`, up to rounding."
    values = recorded_anywhere() if elsewhere else measured(nb)[0]
    scales = {'%': (1, 100), 'x': (1,), '': (1, 0.01)}[unit]
    # the output must print at least the prose's decimals (a percentage: two fewer)
    return any(
        dv + (2 if k == 100 else -2 if k == 0.01 else 0) >= d and rounds_to(k * v, p, d)
        for v, dv in values.items()
        for k in scales
    )


def matches(written: str, nb: Path, sentence: str = '') -> bool:
    """Whether a prose number is one of the notebook's measured numbers up to the prose's rounding,
    or derived from two numbers written beside it in the same sentence."""
    unit = written[-1] if written[-1] in '%x' else ''
    digits = written.rstrip('%x')
    p = float(digits)
    d = len(digits.split('.')[1]) if '.' in digits else 0
    _, lines = measured(nb)
    scales = {'%': (1, 100), 'x': (1,), '': (1, 0.01)}[unit]
    if direct(p, d, unit, nb):
        return True
    if CITES_CHAPTER.search(sentence) and direct(p, d, unit, nb, elsewhere=True):
        return True  # "chapter 3 reached 3.10 bits": another chapter's recorded number
    # beside it: numbers of the same sentence that are themselves measured (at most 4)
    beside = [
        v
        for v, dv in numbers_in(sentence)
        if (dv > 0 or v > 1) and v != p and direct(v, dv, '', nb)
    ]
    pairs = [beside] if len(beside) <= 4 else []
    if unit == 'x':  # a speed-up: the ratio of two numbers on one output line
        pairs += [list(line) for line in lines if 1 < len(line) <= 12]
    for nums in pairs:
        nums = [v for v in nums if v != p]
        if any(rounds_to(k * x, p, d) for x in derived(nums) for k in scales):
            return True
    return False


def unmatched(nb: Path) -> list[str]:
    "The result numbers of a notebook's prose that none of its outputs shows."
    cells = json.loads(nb.read_text(encoding='utf-8'))['cells']
    return [
        n
        for c in cells
        if c['cell_type'] == 'markdown'
        for sentence, n in prose_numbers(''.join(c['source']), with_sentence=True)
        if not matches(n, nb, sentence)
    ]


NOTEBOOKS = sorted(NBS.glob('*.ipynb'))


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_numbers_are_measured(nb):
    allowed = [n for n, _ in ALLOWED.get(nb.name, []) + NOT_RESULTS.get(nb.name, [])]
    found = unmatched(nb)
    new = [n for n in found if n not in allowed]
    assert not new, (
        f'{nb.name}: numbers in the prose that no output or results row of this notebook shows: '
        f'{new}. Print the number in a code cell (or record it), or correct the prose.'
    )
    stale = [n for n in allowed if n not in found]
    assert not stale, (
        f'{nb.name}: {stale} are no longer unmatched prose numbers: delete them from ALLOWED '
        f'(or NOT_RESULTS) in {Path(__file__).name}.'
    )


def test_allow_lists_name_notebooks_and_reasons():
    for table in (ALLOWED, NOT_RESULTS):
        for name, entries in table.items():
            assert (NBS / name).exists(), f'{name} is not a notebook'
            assert all(reason for _, reason in entries)
    assert all(
        r.startswith('issue 22: to fix in the re-run of chapter ')
        for e in ALLOWED.values()
        for _, r in e
    )


def test_the_rule_catches_and_ignores():
    "The cases of issue 22 are caught; references, settings and sections are not result numbers."
    caught = [
        'The LSTM reaches 0.190 accuracy, far better than the plain RNN.',
        'It gets 3.10 bits per character after two epochs.',
        'Ours is 1.57× faster than `tokenizers`.',
        'An earlier version scored 54% on the test voices.',
        'GRU4Rec is best on HR@10 with 0.071.',
    ]
    assert [prose_numbers(s) for s in caught] == [
        ['0.190'],
        ['3.10'],
        ['1.57x'],
        ['54%'],
        ['0.071'],
    ]
    ignored = [
        'Published character LSTMs reach about 1.5 bpc.',
        "LeNet-5's error on full MNIST is 0.95% (LeCun et al. 1998).",
        'We train with learning rate 0.01 for 10 epochs and reach the accuracy shown.',
        'See [2.2 From LeNet-5](11_vision.models.ipynb) for the accuracy.',
        'The loss $L = 0.5 (y - t)^2$ is minimised.',
        '## 3.1 Recurrent cells: accuracy',
        'The accuracy of `0.983` is printed above.',
        'PyTorch 2.9 made the export faster.',
        'Accuracy was 98 on 100 images in 2015.',
    ]
    assert [n for s in ignored for n in prose_numbers(s)] == []


def test_a_wrong_number_in_prose_fails(tmp_path):
    "A prose number is matched by the rounding of a printed one, and a mistyped one is not."

    def notebook(prose):
        nb = tmp_path / f'zz_{len(list(tmp_path.iterdir()))}.ipynb'
        out = {'output_type': 'stream', 'name': 'stdout', 'text': ['acc 0.87064 speed 12.0 30.0\n']}
        cells = [
            {'cell_type': 'code', 'source': ['print(acc)'], 'outputs': [out]},
            {'cell_type': 'markdown', 'source': [prose]},
        ]
        nb.write_text(json.dumps({'cells': cells}))
        return nb

    assert unmatched(notebook('The model reaches 0.871 accuracy, 87.1% of the images.')) == []
    assert unmatched(notebook('It is 2.5× faster.')) == []  # 30.0 / 12.0 on one output line
    assert unmatched(notebook('The model reaches 0.875 accuracy.')) == ['0.875']
    assert unmatched(notebook('The model reaches 88% accuracy.')) == ['88%']
