"""Reliability checks with real processes (`python -m reliability.NAME`); what they share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

RESULTS = Path(__file__).parent / "results"


def finish(name: str, results: list[dict]) -> NoReturn:
    """Print each check's result as a JSON line, write reliability/results/NAME.json, and exit
    1 when one of them is not ok."""
    for result in results:
        print(json.dumps(result), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    raise SystemExit(0 if all(r["ok"] for r in results) else 1)
