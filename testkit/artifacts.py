"""A small random-init model artifact, exported by the real export code."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from training.augment import AugmentConfig
from training.encoder import ContrastiveModel, EncoderConfig
from training.export import write_model_files
from training.train import TrainConfig


def export_random_artifact(out: Path, *, seed: int = 0) -> Path:
    """A random-init encoder written out exactly as training writes a real one."""
    torch.manual_seed(seed)
    cfg = EncoderConfig(widths=(8, 16, 32), depths=(1, 1, 1), whiten_dim=0)
    model = ContrastiveModel(cfg).eval()
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "encoder": cfg.to_dict(),
        "train": dataclasses.asdict(TrainConfig(command="(random init for tests)")),
        "augment": AugmentConfig().to_dict(),
        "input": {
            "channels": 1,
            "height": 28,
            "width": 28,
            "colour_mode": "L",
            "resize": "stretch",
        },
        "data": {"source": "none", "images": 0},
        "epoch": 0,
        "step": 0,
        "history": [],
        "wall_time_s": 0.0,
        "device": "cpu",
    }
    write_model_files(out, model, meta)
    return out
