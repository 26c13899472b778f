"""Fine-tuning from a model: `python -m training train --init models/NAME --data ./photos`.

A new run (fresh optimiser, epoch 1, its own schedule) whose encoder and projection head start
from the artifact's weights.safetensors. It takes the parent's architecture and input size and
colour mode unless the command line sets them; the input normalisation too, since the parent's
first layer learnt on inputs scaled by it. The whitening is refitted on the new data, as every
run fits it. The new artifact names its parent, and its evaluation measures the parent as it
is beside it (training/evaluate.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.imaging import InputSpec
from training.checkpoint import WEIGHTS_FILE, load_checkpoint, read_meta
from training.encoder import ContrastiveModel, EncoderConfig

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)

# TrainConfig settings that must match the parent's for its weights to fit (the image size
# need not: the encoder is convolutional and pools to a fixed grid).
MUST_MATCH = ("colour_mode", "widths", "depths", "pool_grid", "projection_dim")
# The default learning rate of a run from a parent: a tenth of a fresh run's (2e-3). At 2e-3,
# 30 flat epochs on a folder of two unseen icon themes lost to the parent as it was (cross-style
# R@1 0.079 against 0.093, copy R@1 0.44 against 0.48); at 2e-4 they kept it (0.096, 0.485)
# (training/RECIPE.md). `--lr` still sets it.
FINE_TUNE_LR = 2e-4


@dataclass(frozen=True)
class Parent:
    path: Path
    info: dict  # its model.json
    encoder: EncoderConfig  # from its weights.safetensors

    @classmethod
    def open(cls, path: str | Path) -> Parent:
        path = Path(path)
        for name in ("model.json", WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"--init {path}: no {name} there; give a model folder that training "
                    "wrote (models/NAME), with its weights"
                )
        info = json.loads((path / "model.json").read_text())
        return cls(path, info, EncoderConfig.from_dict(read_meta(path / WEIGHTS_FILE)["encoder"]))

    def settings(self) -> dict[str, object]:
        """What a run takes from the parent unless its command line sets it (and the gentler
        learning rate of a run that starts from trained weights)."""
        spec = InputSpec.from_dict(self.info["input"])
        return {
            "lr": FINE_TUNE_LR,
            "image_size": spec.height,
            "colour_mode": spec.colour_mode,
            **{key: getattr(self.encoder, key) for key in MUST_MATCH[1:]},
        }

    def encoder_for(self, cfg: TrainConfig, spec: InputSpec) -> EncoderConfig:
        """The parent's encoder at the run's input size; refused when the run's settings
        would not fit its weights."""
        run = {"colour_mode": spec.colour_mode, **{k: getattr(cfg, k) for k in MUST_MATCH[1:]}}
        parents = self.settings()
        differ = [key for key in MUST_MATCH if run[key] != parents[key]]
        if differ:
            yours = ", ".join(f"{key} {_show(run[key])}" for key in differ)
            theirs = ", ".join(f"{key} {_show(parents[key])}" for key in differ)
            raise ValueError(
                f"--init {self.path}: its weights do not fit {yours} (the parent has {theirs}); "
                "drop those settings to keep the parent's, or train without --init"
            )
        return dataclasses.replace(self.encoder, image_size=spec.height)

    def load_into(self, model: ContrastiveModel) -> None:
        """The parent's encoder and projection head (its optimiser state and epoch stay behind)."""
        load_checkpoint(self.path / WEIGHTS_FILE, model)

    def record(self) -> dict:
        """How model.json and the card name the parent."""
        return {
            "name": self.info["name"],
            "version": self.info["version"],
            "path": str(self.path),
            "data": self.info.get("training", {}).get("data", {}).get("source", "unknown"),
        }

    def describe(self) -> str:
        s = self.settings()
        return (
            f"starting from {self.path} (version {self.info['version'][:12]}: widths "
            f"{_show(s['widths'])}, trained at {s['image_size']} px {s['colour_mode']}): a new "
            "run, its optimiser and schedule start afresh"
        )


def _show(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def locate(record: dict) -> Path | None:
    """The parent's folder when it still holds the version recorded in model.json; None (with
    a warning) when it moved or was replaced, so that no other model is passed off as it."""
    folder = Path(record["path"])
    try:
        version = json.loads((folder / "model.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = None
    if version != record["version"]:
        log.warning(
            "the parent model %s (version %s) is no longer at %s: it is left out of the evaluation",
            record["name"],
            record["version"][:12],
            folder,
        )
        return None
    return folder
