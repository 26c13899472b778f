"""Bulk import: load a folder of images into a running service's gallery.

    python -m service import DIR [--url http://127.0.0.1:8000] [--api-key KEY]

Ids are the files' paths under DIR (`/` becomes `:`). Metadata comes from a sidecar
`metadata.csv` (a `file` column with the relative path, other columns become fields) or
`metadata.json` ({"relative/path.png": {...}}) in DIR. It goes through the Python client
(`client/`, import name `lookalike`), as any other app would. Files already imported (recorded in
DIR/.lookalike-import, or in ~/.cache when DIR is read-only) are skipped on a re-run. A file the
service refuses is reported and skipped; it does not stop the import.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from tqdm import tqdm

try:
    from lookalike import Client, Forbidden, LookalikeError, Unauthorized
except ImportError:  # only this command needs the client; the Docker image and `make` install it
    raise SystemExit(
        "error: python -m service import needs the client: pip install ./client"
    ) from None

SIDECARS = ("metadata.csv", "metadata.json")
BATCH = 32
MAX_RETRIES = 10  # a busy service answers 503 with Retry-After: wait it out rather than stop


def image_id(relative: str) -> str:
    candidate = re.sub(r"[^A-Za-z0-9._:@-]", "_", relative.replace("/", ":"))
    if not candidate[:1].isalnum() or len(candidate) > 128:
        candidate = "f" + hashlib.sha256(relative.encode()).hexdigest()[:40]
    return candidate


def read_sidecar(root: Path) -> dict[str, dict]:
    if (root / "metadata.json").is_file():
        data = json.loads((root / "metadata.json").read_text())
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}
    if (root / "metadata.csv").is_file():
        with open(root / "metadata.csv", newline="") as f:
            return {row.pop("file"): row for row in csv.DictReader(f) if row.get("file")}
    return {}


def progress_file(root: Path, url: str) -> Path:
    name = f".lookalike-import-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
    if os.access(root, os.W_OK):
        return root / name
    cache = Path.home() / ".cache" / "lookalike"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]}{name}"


class Importer:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.failures: list[str] = []

    def upload(self, batch: list[tuple[str, Path]], metadata: dict[str, dict]) -> list[str]:
        """Upload a batch; on a 4xx, file by file, so one bad file skips only itself. The batch
        names its ids, so the client retries it through 503s and dropped connections."""
        try:
            self.client.upload(
                [path for _, path in batch],
                ids=[image_id(rel) for rel, _ in batch],
                metadata=[{"path": rel, **metadata.get(rel, {})} for rel, _ in batch],
                batch_size=len(batch),
            )
        except LookalikeError as exc:
            if exc.status is None or exc.status >= 500 or isinstance(exc, Unauthorized | Forbidden):
                raise SystemExit(f"error: the service answered: {exc}") from None
            if len(batch) == 1:
                self.failures.append(f"{batch[0][0]}: {exc.message}")
                return []
            return [rel for item in batch for rel in self.upload([item], metadata)]
        return [rel for rel, _ in batch]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service import",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=os.environ.get("LOOKALIKE_API_KEY"))
    args = parser.parse_args(argv)
    root: Path = args.folder
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    metadata = read_sidecar(root)
    done_file = progress_file(root, args.url)
    done = set(done_file.read_text().splitlines()) if done_file.exists() else set()
    todo = sorted(
        (str(p.relative_to(root)), p)
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name not in SIDECARS
    )
    todo = [(rel, p) for rel, p in todo if rel not in done]
    print(f"{len(done)} already imported, {len(todo)} to go", file=sys.stderr)
    with (
        Client(args.url, api_key=args.api_key, timeout=120, max_retries=MAX_RETRIES) as client,
        open(done_file, "a") as log,
        tqdm(total=len(todo), unit="img") as bar,
    ):
        importer = Importer(client)
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            for rel in importer.upload(batch, metadata):
                log.write(rel + "\n")
            log.flush()
            bar.update(len(batch))
    for failure in importer.failures:
        print(f"skipped {failure}", file=sys.stderr)
    print(
        f"imported {len(todo) - len(importer.failures)}, skipped {len(importer.failures)}",
        file=sys.stderr,
    )
    return 0
