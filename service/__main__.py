"""lookalike service command line.

python -m service --host 127.0.0.1 --port 8000        # env: LOOKALIKE_MODEL_DIR, ..._DATA_DIR, ...
python -m service --workers 2                         # or LOOKALIKE_WORKERS; "auto" = one per core
python -m service --seed-demo-gallery                 # fill an empty gallery with Fashion-MNIST
python -m service --seed-demo-gallery icons           # ... with the oxygen icons (models/icons)
python -m service import DIR [--url URL]              # bulk-load a folder of images
python -m service backup DEST                         # an online copy of the SQLite gallery
python -m service reembed                             # move the store's vectors to this model
python -m service keys create --name N --scope read   # API keys: create, list, revoke
python -m service model add DIR                       # then model activate V: no downtime
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service.config import Settings
from service.encoder import ArtifactError, Encoder, load_encoder

if TYPE_CHECKING:
    from fastapi import FastAPI

DATABASE_WAIT_S = 30


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"LOOKALIKE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise SystemExit(f"error: bad settings: {problems}") from None


def _encoder(settings: Settings) -> Encoder:
    try:
        return load_encoder(settings.model_dir)  # refuse to start on a bad artifact, in one line
    except ArtifactError as exc:
        raise SystemExit(f"error: {exc}") from None


def run_uvicorn(app: FastAPI, host: str, port: int) -> None:
    """uvicorn as the service runs it (bench/bare_app.py too): our JSON logging, not uvicorn's;
    shutdown gives in-flight requests 10 s."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=10)


def preflight(settings: Settings, encoder: Encoder) -> int:
    """Before any worker starts: the store's schema is current and its vectors are this model's
    (PostgreSQL refuses another model, in one line); how many images it holds. Waits a while for
    a database to come up."""
    import logging

    from service.reembedding import check_model
    from service.store import ModelMismatch, StoreUnavailable, open_store

    log = logging.getLogger("service")
    deadline = time.monotonic() + DATABASE_WAIT_S
    store = open_store(settings)
    try:
        while True:
            try:
                store.migrate()
                check_model(store, encoder.info.name, encoder.info.version)
                return store.count()
            except StoreUnavailable as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"error: {exc}") from None
                log.warning("waiting for the database", extra={"why": str(exc)})
                time.sleep(2)
            except ModelMismatch as exc:
                raise SystemExit(f"error: {exc}") from None
    finally:
        store.close()


def serve(args: argparse.Namespace) -> int:
    from service.heap import limit_malloc_arenas
    from service.index_options import IndexOptions
    from service.logs import configure_logging
    from service.workers import resolve_workers, run_workers, share_cores

    limit_malloc_arenas()  # before any thread: this process serves itself with one worker
    overrides: dict[str, object] = {}
    if args.seed_demo_gallery is not None:
        overrides["seed_demo_gallery"] = args.seed_demo_gallery
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = _settings(**overrides)
    configure_logging(settings.log_level)
    images = preflight(settings, _encoder(settings))
    kind = IndexOptions.from_settings(settings).kind_for(images)
    workers = resolve_workers(settings.workers, images, kind)
    share_cores(settings, workers)
    if workers == 1:
        from service.app import create_app

        run_uvicorn(create_app(settings), args.host, args.port)
    else:
        run_workers(settings, host=args.host, port=args.port, workers=workers)
    return 0


def backup(argv: list[str]) -> int:
    """python -m service backup DEST: a consistent copy of the SQLite gallery while it runs."""
    from pathlib import Path

    from service.store.sqlite import SQLiteStore

    parser = argparse.ArgumentParser(
        prog="python -m service backup",
        description="Copy the gallery (LOOKALIKE_DATA_DIR) into DEST, a new data dir, while the "
        "service runs: SQLite's online backup of gallery.sqlite3, then the originals it names.",
    )
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    settings = _settings()
    if settings.database_url is not None:
        raise SystemExit("error: the gallery is in PostgreSQL: back it up with pg_dump (README)")
    if not (settings.data_dir / "gallery.sqlite3").is_file():
        raise SystemExit(f"error: no gallery in {settings.data_dir} (LOOKALIKE_DATA_DIR)")
    if (args.destination / "gallery.sqlite3").exists():
        raise SystemExit(f"error: {args.destination} already holds a gallery; choose a new folder")
    store = SQLiteStore(settings.data_dir)
    try:
        started = time.monotonic()
        images = store.backup(args.destination)
    finally:
        store.close()
    print(
        f"backed up {images} images to {args.destination} in {time.monotonic() - started:.1f} s "
        f"(use it as LOOKALIKE_DATA_DIR to restore)",
        file=sys.stderr,
    )
    return 0


def reembed(argv: list[str]) -> int:
    """python -m service reembed: move every stored vector to LOOKALIKE_MODEL_DIR's model."""
    from service.logs import configure_logging
    from service.reembedding import upgrade_model
    from service.store import open_store

    argparse.ArgumentParser(
        prog="python -m service reembed",
        description="Re-embed every stored original with LOOKALIKE_MODEL_DIR's model and record "
        "it as the store's model. Stop every replica first; start them with the new model after.",
    ).parse_args(argv)
    settings = _settings()
    configure_logging(settings.log_level)
    encoder = _encoder(settings)
    store = open_store(settings)
    try:
        store.migrate()
        if store.kept_models():
            raise SystemExit(
                "error: this store keeps its models: switch with no downtime instead, "
                "`python -m service model add DIR`, then `model activate VERSION`"
            )
        upgrade_model(store, encoder)
    finally:
        store.close()
    print(f"the store now serves {encoder.info.name} {encoder.info.version}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from service.bulk_import import main as import_main

        return import_main(argv[1:])
    if argv[:1] == ["backup"]:
        return backup(argv[1:])
    if argv[:1] == ["reembed"]:
        return reembed(argv[1:])
    if argv[:1] == ["keys"]:
        from service.keys_cli import main as keys_main

        return keys_main(argv[1:], _settings)
    if argv[:1] == ["model"]:
        from service.model_cli import main as model_main

        return model_main(argv[1:], _settings)
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--workers",
        help='worker processes: a number, or "auto" for one per core (LOOKALIKE_WORKERS)',
    )
    parser.add_argument(
        "--seed-demo-gallery",
        nargs="?",
        const="fashion-mnist",
        choices=["fashion-mnist", "icons"],
        help="when the gallery is empty, fill it with Fashion-MNIST test images (the default) or "
        "the oxygen icons, for models/icons (LOOKALIKE_SEED_DEMO_GALLERY)",
    )
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
