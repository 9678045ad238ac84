"""Where the benchmarks write their results: `benchmarks/out/NAME.json` (imported by the scripts,
which run with this folder on the path; running it alone does nothing)."""

from __future__ import annotations
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / 'out'


def write_json(name: str, result: dict) -> Path:
    "Write `result` to `benchmarks/out/NAME.json`, say where, and return the path."
    path = OUT / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path
