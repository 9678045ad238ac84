"""Every chapter in the book has recorded its headline numbers from a standard run, and they meet
the goals its notebooks assert."""

import json, re
from pathlib import Path

import pytest

from bigmodel_book.results import meets_goal

ROOT = Path(__file__).resolve().parent.parent
# notebook number prefix -> the results files its chapter writes
PARTS = {
    r'0[1-9]': ['foundations'],
    r'1\d': ['vision'],
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


def chapters_in_book():
    names = [p.name for p in (ROOT / 'nbs').glob('*.ipynb')]
    return sorted(
        {
            f
            for pat, files in PARTS.items()
            if any(re.match(pat + '_', n) for n in names)
            for f in files
        }
    )


def load(name):
    return json.loads((ROOT / 'results' / f'{name}.json').read_text())


@pytest.mark.parametrize('chapter', chapters_in_book())
def test_chapter_recorded_results(chapter):
    path = ROOT / 'results' / f'{chapter}.json'
    assert path.exists(), (
        f'{chapter}: no results/{chapter}.json; run its notebooks at the standard scale'
    )
    doc = load(chapter)
    assert doc['scale'] == 'standard', (
        f"{chapter}: results come from a {doc['scale']} run, not the standard one"
    )
    assert doc['rows'] and any(r.get('baseline') for r in doc['rows']), (
        f'{chapter}: every chapter compares with a baseline'
    )


@pytest.mark.parametrize('path', sorted((ROOT / 'results').glob('*.json')), ids=lambda p: p.stem)
def test_recorded_numbers_meet_their_goals(path):
    doc = json.loads(path.read_text())
    failing = [
        f"{r['model']} {r['metric']} = {r['value']:.4g} (goal {r['goal']})"
        for r in doc['rows']
        if not meets_goal(r)
    ]
    assert not failing, f'{path.name}: {failing}'


def test_results_page_counts_match_the_recorded_files():
    "The committed Results page shows, per chapter, the rows and the goals met of results/*.json."
    nb = json.loads((ROOT / 'nbs' / '99_results.all.ipynb').read_text(encoding='utf-8'))
    tables = [
        ''.join(o['data']['text/markdown'])
        for c in nb['cells']
        for o in c.get('outputs', [])
        if 'text/markdown' in o.get('data', {})
    ]
    overview = [line.strip('| ').split(' | ') for line in tables[0].splitlines()[2:]]
    shown = {row[0]: (int(row[1]), row[5]) for row in overview}
    for path in sorted((ROOT / 'results').glob('*.json')):
        doc = json.loads(path.read_text())
        with_goal = [r for r in doc['rows'] if r.get('goal') is not None]
        met = f"{sum(meets_goal(r) for r in with_goal)}/{len(with_goal)}" if with_goal else '-'
        assert shown[doc['chapter']] == (len(doc['rows']), met), doc['chapter']
    assert not any('(baseline) (baseline)' in t for t in tables)
