"""Batched augmentations on the training device: every parameter is drawn per sample, and
every op runs on the whole batch at once (no per-sample PIL work in the hot loop).

`ViewTransform` makes one random view of a batch; `TwoViews` wraps it to give x0, x1.
Input and output are float (B, C, H, W) pixels in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.35, 1.0)  # area kept by random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip_p: float = 0.5  # horizontal flip
    jitter_p: float = 0.8  # probability of applying the colour jitter below
    brightness: float = 0.4  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4  # RGB only
    hue: float = 0.1  # RGB only; fraction of a full turn, in [0, 0.5]
    grayscale_p: float = 0.2  # RGB only
    blur_p: float = 0.0  # Gaussian blur; useful from about 64 px up
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels
    erase_p: float = 0.25  # random erasing of one rectangle
    erase_scale: tuple[float, float] = (0.02, 0.15)  # erased area fraction

    @classmethod
    def for_images(cls, *, channels: int, size: int) -> AugmentConfig:
        """Defaults that suit 28×28 grayscale and 64–96 px colour; the colour ones were chosen
        on a colour clip-art set (training/RECIPE.md): crops of 35–100 % of the area beat 20–100 %
        at 32 and 64 px; blur from 48 px up."""
        if channels == 3 and size >= 48:
            return cls(blur_p=0.5)
        return cls()

    def with_jitter_strength(self, s: float) -> AugmentConfig:
        """SimCLR's colour-distortion strength s: brightness, contrast and saturation 0.8·s,
        hue 0.2·s (Chen et al. 2020, appendix A); the defaults here are s = 0.5."""
        return replace(self, brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    return (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, H, W)


class ViewTransform:
    """One random view of a batch: crop+flip, colour jitter, grayscale, blur, erasing."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = self.resized_crop_and_flip(x, gen)
        x = self.colour_jitter(x, gen)
        if x.shape[1] == 3 and self.cfg.grayscale_p > 0:
            gray = _bernoulli(len(x), self.cfg.grayscale_p, gen, x.device).view(-1, 1, 1, 1)
            x = torch.where(gray, _grayscale(x).expand_as(x), x)
        if self.cfg.blur_p > 0:
            x = self.blur(x, gen)
        if self.cfg.erase_p > 0:
            x = self.erase(x, gen)
        return x

    def resized_crop_and_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, device = len(x), x.device
        area = _uniform(b, *self.cfg.crop_scale, gen, device)
        log_ratio = _uniform(b, *(math.log(r) for r in self.cfg.crop_ratio), gen, device)
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a fraction of the image
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (torch.rand(b, generator=gen, device=device) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=gen, device=device) * 2 - 1) * (1 - h)
        flip = torch.where(_bernoulli(b, self.cfg.flip_p, gen, device), -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=device, dtype=x.dtype)  # (B, 2, 3)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def colour_jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        cfg, b, device = self.cfg, len(x), x.device
        apply = _bernoulli(b, cfg.jitter_p, gen, device).view(-1, 1, 1, 1)

        def factor(strength: float) -> torch.Tensor:
            return _uniform(b, 1 - strength, 1 + strength, gen, device).view(-1, 1, 1, 1)

        y = x * factor(cfg.brightness)
        mean = _grayscale(y).mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * factor(cfg.contrast) + mean
        if x.shape[1] == 3:
            gray = _grayscale(y)
            y = (y - gray) * factor(cfg.saturation) + gray
            if cfg.hue > 0:
                y = self._rotate_hue(y, _uniform(b, -cfg.hue, cfg.hue, gen, device))
        return torch.where(apply, y.clamp(0, 1), x)

    @staticmethod
    def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        # Rotate chroma in YIQ space: a cheap, batched stand-in for an HSV hue shift.
        to_yiq = torch.tensor(
            [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
            device=x.device,
            dtype=x.dtype,
        )
        angle = turns * 2 * math.pi
        cos, sin = angle.cos(), angle.sin()
        rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)  # (B, 3, 3)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        matrix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (B, 3, 3)
        return torch.einsum("bij,bjhw->bihw", matrix, x)

    def blur(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, height, _ = x.shape
        radius = max(1, round(0.05 * height))
        sigma = _uniform(b, *self.cfg.blur_sigma, gen, x.device)
        sigma = torch.where(_bernoulli(b, self.cfg.blur_p, gen, x.device), sigma, 1e-3)
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B·C, K)
        flat = x.reshape(1, b * c, *x.shape[2:])
        flat = F.conv2d(
            F.pad(flat, (radius, radius, 0, 0), mode="replicate"),
            kernel[:, None, None, :],
            groups=b * c,
        )
        flat = F.conv2d(
            F.pad(flat, (0, 0, radius, radius), mode="replicate"),
            kernel[:, None, :, None],
            groups=b * c,
        )
        return flat.reshape_as(x)

    def erase(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, height, width = x.shape
        device = x.device
        area = _uniform(b, *self.cfg.erase_scale, gen, device)
        ratio = _uniform(b, math.log(0.3), math.log(3.3), gen, device).exp()
        eh = (area / ratio).sqrt().clamp(max=1.0)  # fractions of the image
        ew = (area * ratio).sqrt().clamp(max=1.0)
        top = torch.rand(b, generator=gen, device=device) * (1 - eh)
        left = torch.rand(b, generator=gen, device=device) * (1 - ew)
        ys = (torch.arange(height, device=device, dtype=x.dtype) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=x.dtype) + 0.5) / width
        inside_y = (ys[None, :] >= top[:, None]) & (ys[None, :] < (top + eh)[:, None])
        inside_x = (xs[None, :] >= left[:, None]) & (xs[None, :] < (left + ew)[:, None])
        mask = inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W)
        mask &= _bernoulli(b, self.cfg.erase_p, gen, device)[:, None, None]
        fill = torch.rand(b, 1, 1, 1, generator=gen, device=device, dtype=x.dtype)
        return torch.where(mask[:, None], fill, x)


class TwoViews:
    """SimCLR's pair: two independent random views x0, x1 of the same batch."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.view = ViewTransform(cfg)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(x, gen), self.view(x, gen)
