"""`python -m service model check`: copy detection on a sample of the gallery, a new model next
to the serving one (service/model_check.py), on a real SQLite store and real ONNX artifacts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.encoder import ModelInfo
from service.fashion_mnist import load_split
from service.imaging import InputSpec, encode_png
from service.model_check import check_models
from service.store import NewImage, Store
from service.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "fashion-mnist"
SPEC = InputSpec.from_dict(
    {"channels": 1, "height": 28, "width": 28, "colour_mode": "L", "resize": "stretch"}
)


class RawPixels:
    """An encoder without a model: the image's own pixels, as a unit vector."""

    info = ModelInfo("raw-pixels", "r" * 64, 784, SPEC, "")

    def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        flat = np.stack(pixels).reshape(len(pixels), -1).astype(np.float32) - 127.5
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)


class Collapsed(RawPixels):
    """A collapsed model: every image gets the same vector."""

    info = ModelInfo("collapsed", "c" * 64, 784, SPEC, "")

    def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        return np.ones((len(pixels), 784), np.float32) / 28


def fill(store: Store, images: list[bytes]) -> None:
    vector = np.zeros(4, np.float32)  # the check embeds the originals itself
    store.upsert([NewImage(f"i{n}", data, "PNG", {}, vector) for n, data in enumerate(images)], "a")


@pytest.fixture
def store(tmp_path: Path):
    opened = SQLiteStore(tmp_path / "data")
    opened.migrate()
    yield opened
    opened.close()


def fashion(count: int) -> list[bytes]:
    return [encode_png(pixels) for pixels in load_split("test")[0][:count]]


def test_a_model_that_gives_every_image_one_vector_finds_no_original(store: Store) -> None:
    fill(store, fashion(200))
    result = check_models(store, Collapsed(), RawPixels(), sample=150)  # type: ignore[arg-type]
    assert result.images == 150 and result.unreadable == 0
    assert result.serving.recall_at_1 == 0  # ties never count for the original
    assert result.candidate.recall_at_1 > 10 / 150  # chance is 1 / 150
    assert result.difference == result.candidate.recall_at_1
    assert 0 < result.difference_error < result.difference / 4
    again = check_models(store, Collapsed(), RawPixels(), sample=150)  # type: ignore[arg-type]
    assert again == result  # the same sample, the same seeded edits


def test_images_with_identical_pixels_count_as_each_others_original(store: Store) -> None:
    pixels = load_split("test")[0][0]
    other = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(other, "PNG", compress_level=0)  # other bytes
    fill(store, [encode_png(pixels), other.getvalue()])
    result = check_models(store, RawPixels(), RawPixels(), sample=10)  # type: ignore[arg-type]
    assert result.images == 2
    assert result.serving.recall_at_1 == 1.0  # the twin is not "another" image


def test_an_unreadable_original_is_left_out_and_counted(store: Store, tmp_path: Path) -> None:
    fill(store, fashion(30))
    broken = store.sample_originals(1)[0]
    path = next((tmp_path / "data").rglob(f"*{broken}*"))
    path.write_bytes(b"not an image any more")
    result = check_models(store, RawPixels(), RawPixels(), sample=30)  # type: ignore[arg-type]
    assert (result.images, result.unreadable) == (29, 1)


def run_check(data_dir: Path, serving: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", "model", "check", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"LOOKALIKE_DATA_DIR": str(data_dir), "LOOKALIKE_MODEL_DIR": str(serving)},
        timeout=300,
    )


def test_the_command_compares_the_shipped_model_with_a_random_one(
    store: Store, artifact: Path, tmp_path: Path
) -> None:
    fill(store, fashion(300))
    done = run_check(tmp_path / "data", SHIPPED, str(artifact), "--sample", "300", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["images"] == 300
    assert result["serving"]["name"] == "fashion-mnist"
    version = json.loads((artifact / "model.json").read_text())["version"]
    assert result["candidate"]["version"] == version
    assert "300 stored images sampled" in done.stderr
    table = run_check(tmp_path / "data", SHIPPED, str(artifact), "--sample", "300")
    assert table.returncode == 0, table.stderr
    shipped_r1 = f"{result['serving']['recall_at_1']:.3f}"
    assert "fashion-mnist (serving)" in table.stdout and shipped_r1 in table.stdout
    assert (
        ("more originals" in table.stdout)
        or ("fewer originals" in table.stdout)
        or ("within this sample's noise" in table.stdout)
    )


def test_the_command_refuses_what_it_cannot_compare(artifact: Path, tmp_path: Path) -> None:
    same = run_check(tmp_path / "empty", SHIPPED, str(SHIPPED))
    assert same.returncode == 1 and "is the serving model already" in same.stderr
    empty = run_check(tmp_path / "empty", SHIPPED, str(artifact))
    assert empty.returncode == 1 and "the gallery is empty" in empty.stderr
    missing = run_check(tmp_path / "empty", SHIPPED, str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "model.json is missing" in missing.stderr
    tiny = run_check(tmp_path / "empty", SHIPPED, str(artifact), "--sample", "1")
    assert tiny.returncode == 2 and "--sample must be at least 2" in tiny.stderr
