"""training/quantize.py: the int8 graph replaces the float32 one only when it embeds alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from testkit.artifacts import export_random_artifact
from training import quantize
from training.data import load_fashion_mnist


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    test = load_fashion_mnist("test").images
    return test[:300], test[300:600]  # calibration, held out


def ops(graph: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(graph)).graph.node}


def test_a_faithful_int8_graph_replaces_the_float32_one(
    tmp_path: Path, images: tuple[np.ndarray, np.ndarray]
) -> None:
    graph = export_random_artifact(tmp_path / "model") / "encoder.onnx"
    original = tmp_path / "float32.onnx"
    original.write_bytes(graph.read_bytes())
    calibration, heldout = images

    fidelity = quantize.quantized_if_faithful(graph, calibration, heldout)

    assert fidelity.kept and fidelity.images == len(heldout)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(graph)
    assert "QuantizeLinear" not in ops(original)
    # The fidelity it reports is what the two graphs give, measured again here.
    cosines = np.sum(quantize.embed(original, heldout) * quantize.embed(graph, heldout), axis=1)
    assert fidelity.mean_cosine == pytest.approx(float(cosines.mean()), abs=1e-6)
    assert cosines.mean() >= quantize.MIN_MEAN_COSINE
    assert np.percentile(cosines, 1) >= quantize.MIN_P1_COSINE
    assert not list(tmp_path.glob("model/*.int8.onnx"))  # no leftovers beside the artifact


def test_an_int8_graph_that_strays_is_not_kept(
    tmp_path: Path, images: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = export_random_artifact(tmp_path / "model") / "encoder.onnx"
    before = graph.read_bytes()
    monkeypatch.setattr(quantize, "MIN_MEAN_COSINE", 1.01)  # nothing can be this close

    fidelity = quantize.quantized_if_faithful(graph, *images)

    assert not fidelity.kept and 0.9 < fidelity.mean_cosine <= 1.0
    assert graph.read_bytes() == before
    assert not list(tmp_path.glob("model/*.int8.onnx"))


def test_calibration_and_fidelity_samples_are_seeded_subsets() -> None:
    pool = np.arange(10_000)[:, None, None, None].astype(np.uint8)
    a, b = quantize.sample(pool, 100, seed=0), quantize.sample(pool, 100, seed=0)
    assert np.array_equal(a, b) and len(a) == 100
    assert len(quantize.sample(pool[:50], 100, seed=0)) == 50
