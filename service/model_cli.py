"""python -m service model: the models the store keeps, and switching between them with no
downtime (service/models.py, service/model_vectors.py).

    model add DIR            keep a model; every process builds its vectors in the background
    model list               the kept models: which serves, how many images have their vectors
    model status             the same, and how each model that could serve does on your images
    model activate VERSION   serve it: one log entry, every worker and replica within ~1 s
                             (refused while vectors are missing, and for a worse model
                             without --force)
    model rollback           serve the model before again
    model remove VERSION     drop a model that does not serve, and its vectors
    model check DIR          a model that is not kept yet, against the serving one

VERSION is a model's version (sha256 of its encoder.onnx) or a unique prefix of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.encoder import ArtifactError, Encoder, load_encoder
from service.metrics import Metrics
from service.model_check import DEFAULT_SAMPLE, CheckResult, check_models
from service.models import ModelSet, read_artifact
from service.store import Store, StoreUnavailable, open_store
from service.store.base import ModelNotReady, gallery_size

NOISE_ERRORS = 2  # a difference within this many standard errors is not told apart
BAR = 30


@dataclass
class Context:
    settings: Settings
    store: Store

    def encoder(self, version: str) -> Encoder:
        """A kept model, loaded from the store's copy."""
        return ModelSet(self.store, self.settings, Metrics()).encoder(version)

    def serving(self) -> Encoder:
        """The serving model: the store's, or MODEL_DIR's for a store that keeps none yet."""
        version = self.store.model_version()
        if version is not None and version in self.store.kept_models():
            return self.encoder(version)
        return _load(self.settings.model_dir)

    def version(self, prefix: str) -> str:
        """The kept model whose version starts with `prefix` (one, or the command fails)."""
        matches = [v for v in self.store.kept_models() if v.startswith(prefix.lower())]
        if len(matches) != 1:
            found = "no kept model" if not matches else f"{len(matches)} kept models"
            raise SystemExit(f"error: {found} with a version starting {prefix!r} (model list)")
        return matches[0]


def _load(model_dir: Path) -> Encoder:
    try:
        return load_encoder(model_dir)
    except ArtifactError as exc:
        raise SystemExit(f"error: {exc}") from None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _compare(context: Context, serving: Encoder, new: Encoder, sample: int) -> CheckResult:
    try:
        return check_models(context.store, serving, new, sample=sample, progress=_say)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


def check(context: Context, args: argparse.Namespace) -> int:
    serving, new = context.serving(), _load(args.model_dir)
    if new.info.version == serving.info.version:
        raise SystemExit(
            f"error: {args.model_dir} is the serving model already "
            f"(version {serving.info.version[:12]})"
        )
    result = _compare(context, serving, new, args.sample)
    print(json.dumps(result.to_json(), indent=2) if args.json else report(result))
    return 0


def add(context: Context, args: argparse.Namespace) -> int:
    try:
        artifact = read_artifact(args.model_dir)
    except ArtifactError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not context.store.add_model(artifact):
        print(f"{artifact.name} {artifact.version[:12]} is kept already (model list)")
    else:
        print(
            f"kept {artifact.name} {artifact.version[:12]}: the service builds its vectors of "
            "every stored image in the background, while the serving model answers. `model "
            "status` shows how far it got and how it does on your images; `model activate "
            f"{artifact.version[:12]}` switches once it has them all."
        )
    if args.wait:
        wait_for_vectors(context.store, artifact.version)
    return 0


def wait_for_vectors(store: Store, version: str, poll_s: float = 1.0) -> None:
    """A progress bar on stderr until every image has `version`'s vector (built by the running
    service: this command only watches)."""
    started = time.monotonic()
    while True:
        total, missing = store.count(), store.count_missing(version)
        done = total - missing
        share = done / total if total else 1.0
        bar = "#" * round(share * BAR) + "." * (BAR - round(share * BAR))
        seconds = time.monotonic() - started
        line = f"[{bar}] {share:6.1%}  {done:,} / {total:,} vectors, {seconds:.0f} s"
        if sys.stderr.isatty():  # one line, redrawn
            print(f"\r{line}", end="\n" if not missing else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
        if not missing:
            return
        time.sleep(poll_s)


def list_models(context: Context, args: argparse.Namespace) -> int:
    store = context.store
    models, previous = store.models(), store.previous_model()
    total = gallery_size(models, store)
    rows = [("VERSION", "NAME", "DIM", "ADDED", "STATE", "VECTORS")]
    for model in models:
        state = "serving" if model.active else "previous" if model.version == previous else "kept"
        added = dt.datetime.fromtimestamp(model.added_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        vectors = f"{model.vectors:,} / {total:,}"
        rows.append((model.version[:12], model.name, str(model.dim), added, state, vectors))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def status(context: Context, args: argparse.Namespace) -> int:
    list_models(context, args)
    store, serving = context.store, context.serving()
    for version in store.kept_models():
        if version == serving.info.version:
            continue
        missing = store.count_missing(version)
        if missing:
            print(f"\n{version[:12]}: {missing:,} images still lack its vector (building)")
            continue
        print(f"\n{version[:12]} against the serving model:")
        print(report(_compare(context, serving, context.encoder(version), args.sample)))
    return 0


def activate(context: Context, args: argparse.Namespace) -> int:
    version = context.version(args.version)
    serving = context.serving()
    if version == serving.info.version:
        raise SystemExit(f"error: {version[:12]} serves already")
    if not args.force and context.store.count():
        result = _compare(context, serving, context.encoder(version), args.sample)
        print(report(result))
        if result.difference < -NOISE_ERRORS * result.difference_error:
            raise SystemExit(
                "error: the new model finds fewer of your images than the serving one; "
                "activate it anyway with --force"
            )
    return _switch(context, version)


def rollback(context: Context, args: argparse.Namespace) -> int:
    previous = context.store.previous_model()
    if previous is None:
        raise SystemExit("error: no model served before this one is kept (model list)")
    return _switch(context, previous)


def _switch(context: Context, version: str) -> int:
    try:
        change = context.store.activate_model(version)
    except ModelNotReady as exc:
        raise SystemExit(f"error: {exc} (model status)") from None
    print(
        f"{version[:12]} serves from log entry {change.seq} on: every worker and replica "
        "switches at its next catch-up (within about a second) and answers with its `model`"
    )
    return 0


def remove(context: Context, args: argparse.Namespace) -> int:
    version = context.version(args.version)
    try:
        context.store.remove_model(version)
    except ModelNotReady as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"removed {version[:12]} and its vectors")
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
    parser = argparse.ArgumentParser(
        prog="python -m service model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sample = argparse.ArgumentParser(add_help=False)
    sample.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help=f"stored images to compare models on (default {DEFAULT_SAMPLE}: about ±1 point)",
    )
    added = commands.add_parser("add", help="keep a model; its vectors build in the background")
    added.add_argument("model_dir", type=Path, help="the model's artifact folder")
    added.add_argument(
        "--wait", action="store_true", help="show a progress bar until its vectors are built"
    )
    added.set_defaults(run=add)
    commands.add_parser("list", help="the kept models").set_defaults(run=list_models)
    commands.add_parser(
        "status", parents=[sample], help="the kept models, and how each does on your images"
    ).set_defaults(run=status)
    activated = commands.add_parser("activate", parents=[sample], help="serve a kept model")
    activated.add_argument("version", help="its version, or a unique prefix of it")
    activated.add_argument(
        "--force", action="store_true", help="switch without comparing it to the serving model"
    )
    activated.set_defaults(run=activate)
    commands.add_parser("rollback", help="serve the model before again").set_defaults(run=rollback)
    removed = commands.add_parser("remove", help="drop a model that does not serve")
    removed.add_argument("version", help="its version, or a unique prefix of it")
    removed.set_defaults(run=remove)
    checked = commands.add_parser(
        "check",
        parents=[sample],
        help="copy-detection R@1 on a sample of your gallery: a new model next to the serving one",
    )
    checked.add_argument("model_dir", type=Path, help="the new model's artifact folder")
    checked.add_argument("--json", action="store_true", help="the scores as JSON on stdout")
    checked.set_defaults(run=check)
    args = parser.parse_args(argv)
    if getattr(args, "sample", DEFAULT_SAMPLE) < 2:
        parser.error("--sample must be at least 2")
    settings = settings_factory()
    store = open_store(settings)
    try:
        store.migrate()
        return args.run(Context(settings, store), args)
    except StoreUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        store.close()
