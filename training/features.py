"""Features of a torch encoder: pixels in, unit `h` out, whitening fitted without labels."""

from __future__ import annotations

import numpy as np
import torch

from training.encoder import ContrastiveModel, EncoderConfig

BATCH = 1024


def to_pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, C) → float (B, C, H, W) in [0, 1] on the device."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def unwhitened_features(
    model: ContrastiveModel, images: np.ndarray, device: torch.device
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = [
        model.unwhitened(to_pixels(images[s : s + BATCH], device)).float().cpu()
        for s in range(0, len(images), BATCH)
    ]
    model.train(was_training)
    return torch.cat(out)  # (N, D_b)


def fit_whitening(
    model: ContrastiveModel, images: np.ndarray, device: torch.device
) -> torch.Tensor:
    """Fit the PCA-whitening on training images (no labels); return their raw features."""
    h = unwhitened_features(model, images, device)
    model.fit_whitening(h.to(device))
    return h


def random_init_model(cfg: EncoderConfig, train_images: np.ndarray) -> ContrastiveModel:
    """The baseline every trained model must beat: its architecture at seed 0, with the
    whitening fitted on the training images exactly as training fits it."""
    torch.manual_seed(0)
    model = ContrastiveModel(cfg).eval()
    fit_whitening(model, train_images, torch.device("cpu"))
    return model


def torch_embedder(model: ContrastiveModel):
    """uint8 (N, H, W, C) → the served unit `h` (N, D) as numpy, on the CPU."""

    @torch.no_grad()
    def embed(images: np.ndarray) -> np.ndarray:
        return model.whiten(unwhitened_features(model, images, torch.device("cpu"))).numpy()

    return embed
