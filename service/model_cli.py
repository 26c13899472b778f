"""python -m service model check NEW_MODEL_DIR: how a new model finds your images, next to the
one serving them (LOOKALIKE_MODEL_DIR), before you put it into service (service/model_check.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from service.config import Settings
from service.encoder import ArtifactError, Encoder, load_encoder
from service.model_check import DEFAULT_SAMPLE, CheckResult, check_models
from service.store import StoreUnavailable, open_store

NOISE_ERRORS = 2  # a difference within this many standard errors is not told apart


def _load(model_dir: Path) -> Encoder:
    try:
        return load_encoder(model_dir)
    except ArtifactError as exc:
        raise SystemExit(f"error: {exc}") from None


def check(settings: Settings, args: argparse.Namespace) -> int:
    serving, new = _load(settings.model_dir), _load(args.model_dir)
    if new.info.version == serving.info.version:
        raise SystemExit(
            f"error: {args.model_dir} is the serving model already (LOOKALIKE_MODEL_DIR, "
            f"version {serving.info.version[:12]})"
        )
    store = open_store(settings)
    try:
        store.migrate()
        result = check_models(
            store,
            serving,
            new,
            sample=args.sample,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except StoreUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        store.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(report(result))
    return 0


def report(result: CheckResult) -> str:
    """The two scores as a table, and what their difference says."""
    serving, new = result.serving, result.candidate
    rows = [("MODEL", "VERSION", "R@1")]
    for score, role in ((serving, "serving"), (new, "new")):
        rows.append(
            (
                f"{score.name} ({role})",
                score.version[:12],
                f"{score.recall_at_1:.3f} ± {score.standard_error:.3f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    table = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
    difference, error = result.difference, result.difference_error
    if abs(difference) <= NOISE_ERRORS * error:
        verdict = (
            f"the difference ({difference * 100:+.1f} points) is within this sample's noise "
            f"(± {NOISE_ERRORS * error * 100:.1f}); a larger --sample tells them apart"
        )
    else:
        better = "more" if difference > 0 else "fewer"
        verdict = (
            f"the new model finds {abs(difference) * 100:.1f} points {better} originals than "
            f"the serving one ({abs(difference) / error:.1f} standard errors)"
        )
    unreadable = f" ({result.unreadable} unreadable left out)" if result.unreadable else ""
    return (
        f"copy detection on {result.images:,} images of your gallery{unreadable}: an edited copy "
        "of each (crop, flip, colour jitter, rotation, blur, a border or text, JPEG) must find "
        f"its original among them first.\n\n{table}\n\n{verdict}"
    )


def main(argv: list[str], settings_factory: Callable[[], Settings]) -> int:
    parser = argparse.ArgumentParser(prog="python -m service model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    checked = commands.add_parser(
        "check",
        help="copy-detection R@1 on a sample of your gallery: a new model next to the serving one",
    )
    checked.add_argument("model_dir", type=Path, help="the new model's artifact folder")
    checked.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help=f"stored images to test on (default {DEFAULT_SAMPLE}: about ±1 point)",
    )
    checked.add_argument("--json", action="store_true", help="the scores as JSON on stdout")
    checked.set_defaults(run=check)
    args = parser.parse_args(argv)
    if args.sample < 2:
        parser.error("--sample must be at least 2")
    return args.run(settings_factory(), args)
