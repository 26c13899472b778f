"""The `icons` demo gallery (`--seed-demo-gallery icons`): oxygen-like icons from a folder laid
out like /usr/share/icons/oxygen, seeded once through the app, with a clear message without it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.config import Settings
from service.demo import oxygen_icons
from testkit.app import make_settings, wait_ready
from testkit.server import AUTH

MODELS = Path(__file__).resolve().parent.parent / "models"
# The colour model when it is there (its input is 128×128 RGB); the shipped one resizes too.
MODEL = next(
    m
    for m in (MODELS / "icons", MODELS / "fashion-mnist")
    if (m / "model.json").is_file() and (m / "encoder.onnx").is_file()
)


def _png(side: int, colour: tuple[int, int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _icon(root: Path, size: int, context: str, name: str, colour: tuple) -> bytes:
    path = root / "base" / f"{size}x{size}" / context / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png := _png(size, colour))
    return png


@pytest.fixture
def oxygen(tmp_path: Path) -> tuple[Path, bytes]:
    """A small oxygen-like theme; returns its root and the drawing konqueror should get."""
    root = tmp_path / "oxygen"
    _icon(root, 48, "apps", "konqueror", (0, 0, 255, 255))
    largest = _icon(root, 256, "apps", "konqueror", (255, 0, 0, 255))  # the largest wins
    _icon(root, 128, "places", "folder", (240, 200, 0, 255))
    (root / "base" / "128x128" / "places" / "folder-home.png").symlink_to("folder.png")  # alias
    _icon(root, 64, "mimetypes", "text-plain", (255, 255, 255, 0))
    _icon(root, 32, "actions", "edit-copy", (0, 128, 0, 255))  # under 48 px: left out
    _icon(root, 64, "animations", "process-working", (9, 9, 9, 255))  # a sprite strip: left out
    return root, largest


def test_an_empty_gallery_is_seeded_once_with_the_oxygen_icons(
    oxygen: tuple[Path, bytes], tmp_path: Path
) -> None:
    root, konqueror = oxygen
    settings = make_settings(
        MODEL, tmp_path / "data", seed_demo_gallery="icons", demo_icons_dir=root
    )
    expected = {
        "oxygen-folder": {"theme": "oxygen", "name": "folder", "context": "places"},
        "oxygen-konqueror": {"theme": "oxygen", "name": "konqueror", "context": "apps"},
        "oxygen-text-plain": {"theme": "oxygen", "name": "text-plain", "context": "mimetypes"},
    }
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        assert client.get("/readyz").json()["images"] == 3
        items = client.get("/images").json()["items"]
        assert {item["id"]: item["metadata"] for item in items} == expected
        assert client.get("/images/oxygen-konqueror/content").content == konqueror
        hit = client.post("/nearest", json={"id": "oxygen-folder", "k": 1}).json()["results"]
        assert hit[0]["id"] == "oxygen-folder"

    # A second start finds the gallery filled: nothing is added, not even a new icon.
    _icon(root, 128, "apps", "kate", (0, 200, 200, 255))
    with TestClient(create_app(settings), headers=AUTH) as client:
        wait_ready(client)
        assert client.get("/readyz").json()["images"] == 3
        assert {item["id"] for item in client.get("/images").json()["items"]} == set(expected)


def test_without_the_icons_the_service_starts_empty_and_says_what_to_install(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-oxygen"
    with pytest.raises(FileNotFoundError, match="apt-get install oxygen-icon-theme"):
        oxygen_icons(missing, 10)
    settings = make_settings(
        MODEL, tmp_path / "data", seed_demo_gallery="icons", demo_icons_dir=missing
    )
    with (
        caplog.at_level(logging.WARNING, logger="service.demo"),
        TestClient(create_app(settings), headers=AUTH) as client,
    ):
        wait_ready(client)
        assert client.get("/readyz").json()["images"] == 0
    skipped = [r.getMessage() for r in caplog.records if r.name == "service.demo"]
    assert len(skipped) == 1 and str(missing) in skipped[0]
    assert "apt-get install oxygen-icon-theme" in skipped[0]


@pytest.mark.parametrize(
    ("value", "gallery"),
    [
        ("true", "fashion-mnist"),
        ("fashion-mnist", "fashion-mnist"),
        ("icons", "icons"),
        ("false", None),
        ("", None),
    ],
)
def test_the_setting_is_a_choice_and_true_still_means_fashion_mnist(
    value: str, gallery: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOKALIKE_SEED_DEMO_GALLERY", value)
    assert Settings().seed_demo_gallery == gallery
