"""A full data dir, for real: the gallery lives on a tiny tmpfs. Writes get 507 with a clear
error, what was stored stays intact and searchable, and writes resume once space returns."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from testkit.app import make_settings, wait_ready
from testkit.images import png_bytes
from testkit.server import API_KEY, AUTH


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _big_png(seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")  # ~480 kB, incompressible
    return buffer.getvalue()


def test_a_full_data_dir_gives_507_keeps_the_gallery_and_recovers(
    artifact: Path, tiny_disk: Path
) -> None:
    settings = make_settings(artifact, tiny_disk / "data", api_key=API_KEY)
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        kept = [png_bytes(800 + i) for i in range(3)]
        assert (
            client.post(
                "/images",
                files=[("files", ("k.png", b)) for b in kept],
                data={"ids": ["k0", "k1", "k2"]},
                headers=AUTH,
            ).status_code
            == 201
        )
        filler = tiny_disk / "filler"
        free = subprocess.run(
            ["df", "--output=avail", "-B1", str(tiny_disk)], capture_output=True, text=True
        ).stdout.split()[-1]
        filler.write_bytes(b"\0" * max(0, int(free) - 64 * 1024))

        statuses = [
            client.post("/images", files=[("files", ("big.png", _big_png(i)))], headers=AUTH)
            for i in range(3)
        ]
        assert all(r.status_code == 507 for r in statuses), [r.text for r in statuses]
        assert statuses[0].json()["error"]["code"] == "insufficient_storage"

        ready = client.get("/readyz").json()
        assert ready["images"] == ready["indexed"] == 3
        top = client.post("/nearest", files=[("file", ("q.png", kept[1]))], data={"k": "1"})
        assert top.json()["results"][0]["id"] == "k1"
        assert client.get("/images/k2/content").content == kept[2]

        filler.unlink()
        again = client.post("/images", files=[("files", ("big.png", _big_png(9)))], headers=AUTH)
        assert again.status_code == 201
        assert client.get("/readyz").json()["images"] == 4
