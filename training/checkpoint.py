"""weights.safetensors: the model, the optimiser state, the RNG and the run's metadata in one
safetensors file (no pickle anywhere), written atomically every epoch for `--resume`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

WEIGHTS_FILE = "weights.safetensors"
META_KEY = "lookalike"


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, meta: dict
) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = dict(meta)
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).contiguous().cpu()
        meta["optimizer_param_groups"] = state["param_groups"]
    tensors["rng.torch"] = torch.get_rng_state()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.chmod(0o644)
    tmp.replace(path)


def read_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[META_KEY])


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict:
    """Load weights (and optimiser and RNG state, when given) into place; return the meta."""
    tensors = load_file(str(path))
    meta = read_meta(path)
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Checkpoints from before whitening existed lack only its (re-fittable) buffers.
    if unexpected or any(not k.startswith("whiten_") for k in missing):
        raise ValueError(f"{path} does not match the model: missing {missing}, extra {unexpected}")
    if optimizer is not None and "optimizer_param_groups" in meta:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
    return meta


def save_without_optimizer(src: Path, dst: Path) -> None:
    """Copy a checkpoint without its optimiser state: the weights and the run's metadata, for
    fine-tuning and re-export, at about a third of the size (a resume restarts AdamW's moments)."""
    tensors = {k: v for k, v in load_file(str(src)).items() if not k.startswith("optim.")}
    meta = {k: v for k, v in read_meta(src).items() if k != "optimizer_param_groups"}
    save_file(tensors, str(dst), metadata={META_KEY: json.dumps(meta)})
    dst.chmod(0o644)
