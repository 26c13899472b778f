"""Write the model artifact: encoder.onnx, model.json, metrics.json and the README card.

weights.safetensors is already in place (train.py rewrites it every epoch). The ONNX graph
takes float32 pixels in [0, 1], (N, C, H, W) with a dynamic batch, and returns L2-normalised
`h` (N, D); the mean/std normalisation and the final normalisation are inside the graph.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import torch

from training.data import Split
from training.encoder import ContrastiveModel, EmbeddingGraph
from training.evaluate import (
    NEIGHBOUR_GRID,
    evaluate_split,
    format_table,
    headline,
    write_evaluation,
)
from training.quantize import quantized_if_faithful

ONNX_FILE = "encoder.onnx"
PARITY_TOLERANCE = 1e-4


def export_onnx(model: ContrastiveModel, path: Path) -> None:
    cfg = model.cfg
    graph = EmbeddingGraph(model).eval()
    example = torch.rand(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        graph,
        (example,),
        input_names=["images"],
        output_names=["embeddings"],
        dynamic_shapes={"images": {0: batch}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path), external_data=False)


def check_parity(model: ContrastiveModel, path: Path) -> float:
    """Largest |ONNX − torch| over a random batch; raise when above the tolerance."""
    import onnxruntime as ort

    cfg = model.cfg
    x = torch.rand(
        17,
        cfg.in_channels,
        cfg.image_size,
        cfg.image_size,
        generator=torch.Generator().manual_seed(0),
    )
    expected = model.embed(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and torch disagree by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


def git_commit() -> str:
    """HEAD (with -dirty for uncommitted changes), else $LOOKALIKE_GIT_COMMIT: a copy of the tree
    without .git, such as a lent GPU machine's, gets it from bench/gpu_prepare.sh."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LOOKALIKE_GIT_COMMIT") or "unknown"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loss_summary(train_cfg: dict, grouped: bool) -> dict:
    """The loss as model.json names it: "supcon" is NT-Xent with group-mates as positives."""
    koleo = {"koleo_weight": train_cfg.get("koleo_weight", 0.0)}
    if train_cfg["loss"] == "ntxent":
        name = "supcon" if grouped else "ntxent"
        return {"name": name, "temperature": train_cfg["temperature"], **koleo}
    return {
        "name": "triplet",
        "margin": train_cfg["margin"],
        "mining": train_cfg["mining"],
        **koleo,
    }


def model_json(out: Path, model: ContrastiveModel, meta: dict, precision: dict) -> dict:
    train_cfg = meta["train"]
    return {
        "format_version": 1,
        "name": out.name,
        "version": sha256_file(out / ONNX_FILE),
        "input": {
            **meta["input"],
            "dtype": "float32",
            "layout": "NCHW",
            "value_range": [0, 1],
            "name": "images",
        },
        "output": {"name": "embeddings", "l2_normalised": True},
        "embedding_dim": model.cfg.embedding_dim,
        "precision": precision,
        "architecture": model.cfg.to_dict(),
        "parent": meta.get("parent"),  # the model it was fine-tuned from (--init), or None
        "loss": loss_summary(train_cfg, grouped=bool(meta.get("grouping"))),
        "training": {
            "commands": meta.get("commands", [train_cfg.get("command", "")]),
            "data": meta["data"],
            "grouping": meta.get("grouping"),
            "epochs": meta["epoch"],
            "steps": meta["step"],
            "wall_time_s": round(meta["wall_time_s"], 1),
            "device": meta["device"],
            "runtime": meta.get("runtime"),
            "git_commit": git_commit(),
            "config": train_cfg,
            "augment": meta["augment"],
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_model_files(
    out: Path, model: ContrastiveModel, meta: dict, split: Split | None = None
) -> dict:
    """What the service loads: the ONNX graph (checked against torch) and model.json. With the
    split's images, the graph becomes int8 when that embeds like float32 (training/quantize.py;
    TrainConfig.int8)."""
    out = Path(out)
    onnx_path = out / ONNX_FILE
    export_onnx(model, onnx_path)
    diff = check_parity(model, onnx_path)
    print(f"exported {onnx_path} (ONNX vs torch max |diff| {diff:.1e})")
    precision: dict = {"graph": "float32"}
    if split is not None and meta["train"].get("int8", True):
        fidelity = quantized_if_faithful(onnx_path, split.train.images, split.heldout.images)
        precision = {
            "graph": "int8" if fidelity.kept else "float32",
            "int8_fidelity": fidelity.to_dict(),
        }
        print(
            f"int8 graph: cosine to float32 {fidelity.mean_cosine:.4f} on average, "
            f"≥ {fidelity.p1_cosine:.4f} for 99 % of {fidelity.images} held-out images: "
            + ("kept" if fidelity.kept else "not kept, the graph stays float32")
        )
    info = model_json(out, model, meta, precision)
    (out / "model.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def export_artifact(out: Path, model: ContrastiveModel, meta: dict, split: Split) -> dict:
    """The model files, then the evaluation on the split, its pictures and the card."""
    from training.card import write_card

    out = Path(out)
    info = write_model_files(out, model, meta, split)
    print(f"evaluating on {split.train.source}; held out: {split.rule}", flush=True)
    evaluation = evaluate_split(out, split)
    write_evaluation(evaluation, out)
    write_card(out, info, meta["history"], evaluation.result)
    print(format_table(evaluation.result))
    print(f"{headline(evaluation.result)}.")
    print(f"neighbour grid: {out / NEIGHBOUR_GRID}; model card: {out / 'README.md'}")
    return info
