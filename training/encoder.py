"""A small CNN family: the backbone whose output `h` the service embeds, and a projection
head whose output `z` only the loss sees (SimCLR, Chen et al. 2020, section 2.1).

The config dataclass is saved inside every checkpoint and the model is rebuilt from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    in_channels: int = 1
    image_size: int = 28
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage; each stage halves H and W
    depths: tuple[int, ...] = (1, 1, 1)  # conv layers per stage (extra ones are residual)
    # `h` keeps a coarse layout: the last feature map average-pooled to grid×grid cells.
    # Fashion-MNIST classes differ by shape, so where a feature fires matters (grid=1 is GAP).
    pool_grid: int = 2
    projection_hidden: int = 512
    projection_dim: int = 128
    # `h` is PCA-whitened to this many dims (0: off), fitted without labels on the training
    # set's features after training (Jégou & Chum 2012). power 1 = full whitening, 0 = PCA only.
    whiten_dim: int = 256
    whiten_power: float = 0.5
    # Per-channel input normalisation, baked into the exported graph.
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.depths) or not self.widths:
            raise ValueError("widths and depths need one entry per stage")
        if any(d < 1 for d in self.depths) or any(w < 1 for w in self.widths):
            raise ValueError("every stage needs at least one layer and one channel")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError("mean and std need one value per input channel")
        if not 0 <= self.whiten_dim <= self.backbone_dim:
            raise ValueError(f"whiten_dim must be in 0..{self.backbone_dim}, got {self.whiten_dim}")
        if self.feature_size % self.pool_grid:
            raise ValueError(
                f"pool_grid {self.pool_grid} must divide the final feature map "
                f"({self.feature_size}×{self.feature_size} for image_size {self.image_size})"
            )

    @property
    def feature_size(self) -> int:
        size = self.image_size
        for _ in self.widths:
            size = (size - 1) // 2 + 1  # 3×3 conv, stride 2, padding 1
        return size

    @property
    def backbone_dim(self) -> int:
        return self.widths[-1] * self.pool_grid**2

    @property
    def embedding_dim(self) -> int:
        return self.whiten_dim or self.backbone_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown encoder config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    )


class ResidualLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv_bn(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv(x))


class Backbone(nn.Module):
    """Stages of (stride-2 conv, then residual 3×3 convs); `h` is the grid-pooled last map."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for width, depth in zip(cfg.widths, cfg.depths, strict=True):
            layers += [_conv_bn(c_in, width, 2), nn.ReLU(inplace=True)]
            layers += [ResidualLayer(width) for _ in range(depth - 1)]
            c_in = width
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x)  # (B, C, S, S)
        pooled = F.avg_pool2d(fmap, fmap.shape[-1] // self.cfg.pool_grid)  # (B, C, g, g)
        return pooled.flatten(1)  # (B, C·g²)


class ProjectionHead(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.backbone_dim, cfg.projection_hidden, bias=False),
            nn.BatchNorm1d(cfg.projection_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.projection_hidden, cfg.projection_dim),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ContrastiveModel(nn.Module):
    """Backbone + projection head; `forward` returns z for the loss, `embed` the served h."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.head = ProjectionHead(cfg)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)
        width = cfg.whiten_dim or 1
        self.register_buffer("whiten_mean", torch.zeros(cfg.backbone_dim))
        self.register_buffer("whiten_matrix", torch.eye(cfg.backbone_dim, width))  # (D_b, D)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalise(images)))  # (B, projection_dim)

    def unwhitened(self, images: torch.Tensor) -> torch.Tensor:
        return _unit(self.backbone(self.normalise(images)))  # (B, D_b)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-length `h` for pixels in [0, 1]: exactly what the exported graph computes."""
        return self.whiten(self.unwhitened(images))

    def whiten(self, h: torch.Tensor) -> torch.Tensor:
        """Unwhitened unit features (B, D_b) → the served unit `h` (B, D)."""
        if not self.cfg.whiten_dim:
            return h
        return _unit((h - self.whiten_mean) @ self.whiten_matrix)  # (B, D)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.embedding(images)

    @torch.no_grad()
    def fit_whitening(self, h: torch.Tensor) -> None:
        """PCA-whitening of unwhitened features h (N, D_b), from their covariance."""
        if not self.cfg.whiten_dim:
            return
        h = h.double()
        mean = h.mean(0)
        cov = (h - mean).T @ (h - mean) / max(1, len(h) - 1)  # (D_b, D_b)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
        # Floor tiny eigenvalues (fewer images than dims, say) so noise is not blown up.
        floor = eigenvalues.max().clamp_min(1e-12) * 1e-5
        top = eigenvalues.flip(0)[: self.cfg.whiten_dim].clamp_min(floor)
        vectors = eigenvectors.flip(1)[:, : self.cfg.whiten_dim]  # (D_b, D)
        scale = top.sqrt().pow(-self.cfg.whiten_power)
        self.whiten_mean.copy_(mean.float())
        self.whiten_matrix.copy_((vectors * scale).float())


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class EmbeddingGraph(nn.Module):
    """The exported graph: pixels in [0, 1] → normalise → backbone → (whitened) unit `h`."""

    def __init__(self, model: ContrastiveModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embedding(images)
