"""lookalike service command line.

python -m service --host 127.0.0.1 --port 8000        # env: LOOKALIKE_MODEL_DIR, ..._DATA_DIR, ...
python -m service --seed-demo-gallery                 # fill an empty gallery with Fashion-MNIST
python -m service import DIR [--url URL]              # bulk-load a folder of images
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service.config import Settings
from service.encoder import ArtifactError, load_encoder

if TYPE_CHECKING:
    from fastapi import FastAPI


def _settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"LOOKALIKE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise SystemExit(f"error: bad settings: {problems}") from None


def run_uvicorn(app: FastAPI, host: str, port: int) -> None:
    """uvicorn as the service runs it (bench/bare_app.py too): our JSON logging, not uvicorn's;
    shutdown gives in-flight requests 10 s."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=10)


def serve(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.logs import configure_logging

    overrides = {"seed_demo_gallery": True} if args.seed_demo_gallery else {}
    settings = _settings(**overrides)
    configure_logging(settings.log_level)
    try:
        load_encoder(settings.model_dir)  # refuse to start on a bad artifact, in one line
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_uvicorn(create_app(settings), args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from service.bulk_import import main as import_main

        return import_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--seed-demo-gallery",
        action="store_true",
        help="when the gallery is empty, fill it with Fashion-MNIST test images",
    )
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
