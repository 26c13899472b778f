"""The artifact's encoder, run through ONNX Runtime (never torch).

`load_encoder` checks the artifact before anything else starts, and fails with one line that
says what is wrong: a missing file, a model.json that does not match the graph, a version that
does not match encoder.onnx.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.imaging import InputSpec


class ArtifactError(RuntimeError):
    """The model artifact is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    dim: int
    spec: InputSpec
    created_at: str = ""  # ISO 8601, from model.json


class Encoder:
    def __init__(self, info: ModelInfo, session: ort.InferenceSession) -> None:
        self.info = info
        self._session = session
        self._input = session.get_inputs()[0].name

    def embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        """uint8 (H, W, C) arrays from decode_image → unit vectors (N, D) float32."""
        return self._session.run(None, {self._input: graph_input(np.stack(pixels))})[0]


def graph_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) pixels → the graph's input: float32 (N, C, H, W) in [0, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) * (1 / 255)


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first `dimensions` components of unit vectors (N, D), renormalised to unit length.
    The vectors are PCA-whitened, so the leading components carry the most variance and a
    prefix is a smaller embedding of its own (what it costs: bench/quality.py --dimensions)."""
    head = vectors[:, :dimensions].astype(np.float32)  # (N, d)
    norms = np.linalg.norm(head, axis=1, keepdims=True)  # (N, 1)
    return head / np.maximum(norms, np.finfo(np.float32).tiny)


def load_encoder(model_dir: Path, *, threads: int = 0) -> Encoder:
    model_dir = Path(model_dir)
    meta_path, onnx_path = model_dir / "model.json", model_dir / "encoder.onnx"
    for path in (meta_path, onnx_path):
        if not path.is_file():
            raise ArtifactError(f"model artifact {model_dir}: {path.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
        spec = InputSpec.from_dict(meta["input"])
        info = ModelInfo(
            str(meta["name"]),
            str(meta["version"]),
            int(meta["embedding_dim"]),
            spec,
            str(meta.get("created_at", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"model artifact {model_dir}: model.json is invalid ({exc})") from exc
    graph = onnx_path.read_bytes()
    if hashlib.sha256(graph).hexdigest() != info.version:
        raise ArtifactError(
            f"model artifact {model_dir}: encoder.onnx does not match model.json's version "
            "(sha256); the files come from different exports"
        )
    options = ort.SessionOptions()
    # Idle intra-op threads sleep instead of spinning: model calls come in bursts between
    # requests, and a spinning thread takes a core from the event loop (bench/serve.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ArtifactError(
            f"model artifact {model_dir}: encoder.onnx does not load ({exc})"
        ) from exc
    encoder = Encoder(info, session)
    probe = np.zeros((spec.height, spec.width, spec.channels), dtype=np.uint8)
    try:
        out = encoder.embed_pixels([probe])
    except Exception as exc:
        raise ArtifactError(
            f"model artifact {model_dir}: encoder.onnx does not accept model.json's input "
            f"{spec.channels}×{spec.height}×{spec.width} ({exc})"
        ) from exc
    if out.shape != (1, info.dim):
        raise ArtifactError(
            f"model artifact {model_dir}: encoder.onnx gives {out.shape[1:]} vectors, "
            f"model.json says embedding_dim {info.dim}"
        )
    return encoder
