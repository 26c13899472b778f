"""An int8 copy of the float32 encoder, kept only when it embeds like the original.

Static quantization (ONNX Runtime, QDQ format): int8 weights per output channel, uint8
activations whose ranges are calibrated on training images. `reduce_range` keeps weights to
7 bits, so the int8 products cannot saturate on x86 CPUs without VNNI (AVX2 only), where ONNX
Runtime multiplies uint8 × int8 pairs into 16-bit sums; without it such CPUs lose accuracy.

On the shipped Fashion-MNIST model (BENCHMARKS.md §3) int8 runs a single image in 0.44 ms
against 0.74–0.77 on one core here, with the same kNN and retrieval quality. The copy is
judged against the float32 graph on held-out images: the cosine of each image's two vectors.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.encoder import graph_input

CALIBRATION_IMAGES = 2_000
CALIBRATION_BATCH = 100
FIDELITY_IMAGES = 2_000
# The int8 graph is kept when the cosine between its vector and float32's is at least this,
# on average and for 99 % of held-out images (the shipped model: 0.994 and 0.985).
MIN_MEAN_COSINE = 0.98
MIN_P1_COSINE = 0.95


@dataclass(frozen=True)
class Fidelity:
    """How closely the int8 graph follows float32 on held-out images."""

    images: int
    mean_cosine: float
    p1_cosine: float  # 99 % of the images are at least this close

    @property
    def kept(self) -> bool:
        return self.mean_cosine >= MIN_MEAN_COSINE and self.p1_cosine >= MIN_P1_COSINE

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "mean_cosine": round(self.mean_cosine, 4),
            "p1_cosine": round(self.p1_cosine, 4),
        }


def sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(images) <= count:
        return images
    return images[np.random.default_rng(seed).choice(len(images), count, replace=False)]


def quantize(float_graph: Path, out: Path, calibration: np.ndarray) -> None:
    """Write the int8 graph of `float_graph` to `out`, calibrated on uint8 (N, H, W, C) images."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    batches = iter(
        graph_input(calibration[s : s + CALIBRATION_BATCH])
        for s in range(0, len(calibration), CALIBRATION_BATCH)
    )

    class Batches(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(batches, None)
            return None if batch is None else {"images": batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred, graph optimised first
        quant_pre_process(str(float_graph), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
        )


def embed(graph: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            session.run(None, {"images": graph_input(images[s : s + 256])})[0]
            for s in range(0, len(images), 256)
        ]
    )


def fidelity(float_graph: Path, int8_graph: Path, images: np.ndarray) -> Fidelity:
    cosines = np.sum(embed(float_graph, images) * embed(int8_graph, images), axis=1)
    return Fidelity(len(images), float(cosines.mean()), float(np.percentile(cosines, 1)))


def quantized_if_faithful(
    float_graph: Path, calibration: np.ndarray, heldout: np.ndarray
) -> Fidelity:
    """Replace `float_graph` by its int8 copy when that copy embeds held-out images like it;
    leave it as it is otherwise. Either way, say how close the copy came."""
    int8_graph = float_graph.with_suffix(".int8.onnx")
    try:
        quantize(float_graph, int8_graph, sample(calibration, CALIBRATION_IMAGES, seed=0))
        result = fidelity(float_graph, int8_graph, sample(heldout, FIDELITY_IMAGES, seed=1))
        if result.kept:
            int8_graph.replace(float_graph)
        return result
    finally:
        int8_graph.unlink(missing_ok=True)
