"""Contrastive losses: NT-Xent (SimCLR), with group-mates as extra positives (SupCon), the
KoLeo spreading term (SSCD), and triplet loss with in-batch mining."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0; gradients flow back to each rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, without gradient (ids, labels)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross-entropy (Chen et al. 2020, SimCLR, Algorithm 1).

    For B images and two views there are 2B rows. Row i holds the cosine similarity of
    example i to all 2B examples; its own entry is masked out, and the loss is a softmax
    cross-entropy over the other 2B−1 entries at temperature τ, the other view being the
    target. The mean is taken over all 2B rows. Under DDP, negatives come from every rank.

    With `groups` (B,) int64, -1 for none, images of one group are positives of each other
    too: the multi-positive form (Khosla et al. 2020, SupCon's L_out). The positives of row i
    are its other view and both views of every other batch image in its group, and its loss is
    minus the mean of their log-softmax over the same 2B−1 entries. A row without group-mates
    in the batch has one positive, so its term is exactly the NT-Xent term above.

    Shapes: z0, z1 (B, D), groups (B,) or None → scalar. Computed in fp32 (autocast is switched
    off inside) with log-sum-exp, so it is stable under bf16/fp16 autocast.
    """

    def __init__(self, temperature: float = 0.5, *, gather_distributed: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(
        self, z0: torch.Tensor, z1: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        if z0.shape != z1.shape or z0.ndim != 2:
            raise ValueError(
                f"z0 and z1 must both be (B, D), got {tuple(z0.shape)}, {tuple(z1.shape)}"
            )
        if groups is not None and groups.shape != z0.shape[:1]:
            raise ValueError(f"groups must be (B,) = ({len(z0)},), got {tuple(groups.shape)}")
        # fp32 from here on, even under autocast: a bf16 matmul would round every logit.
        with torch.autocast(z0.device.type, enabled=False):
            z0, z1 = F.normalize(z0.float(), dim=1), F.normalize(z1.float(), dim=1)
            return self._loss(z0, z1, groups)

    def _loss(
        self, z0: torch.Tensor, z1: torch.Tensor, groups: torch.Tensor | None
    ) -> torch.Tensor:
        batch = len(z0)
        offset = 0
        all0, all1, all_groups = z0, z1, groups
        if self.gather_distributed and dist.is_available() and dist.is_initialized():
            all0, all1 = gather_with_grad(z0), gather_with_grad(z1)
            all_groups = None if groups is None else gather(groups)
            offset = dist.get_rank() * batch
        total = len(all0)
        keys = torch.cat([all0, all1])  # (2B_all, D)
        queries = torch.cat([z0, z1])  # (2B, D)
        logits = queries @ keys.T / self.temperature  # (2B, 2B_all)
        local = torch.arange(batch, device=z0.device) + offset  # rows' own index in all0
        self_index = torch.cat([local, local + total])  # (2B,)
        target = torch.cat([local + total, local])  # the other view
        rows = torch.arange(2 * batch, device=z0.device)
        logits[rows, self_index] = float("-inf")
        if groups is None:
            return F.cross_entropy(logits, target)
        positive = torch.zeros_like(logits, dtype=torch.bool)
        positive[rows, target] = True
        row_groups, key_groups = groups.repeat(2), all_groups.repeat(2)  # (2B,), (2B_all,)
        positive |= (row_groups[:, None] == key_groups[None, :]) & (row_groups[:, None] >= 0)
        positive[rows, self_index] = False
        log_prob = logits.log_softmax(dim=1).masked_fill(~positive, 0.0)
        return (-log_prob.sum(1) / positive.sum(1)).mean()


def koleo_loss(z: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The Kozachenko-Leonenko entropy term (Sablayrolles et al. 2019; SSCD, Pizzi et al.
    2022): minus the mean log distance of each unit row of `z` to its nearest other row, so
    minimising it spreads the batch over the sphere. Rows of one group (`groups`, -1 for none)
    are not each other's neighbours here, as the contrastive loss pulls them together. Give it
    one view at a time: the other view of an image is its positive, not a neighbour to push.

    Shapes: z (B, D), groups (B,) or None → scalar, in fp32; rows with no neighbour are left out.
    """
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=1)
        same = torch.eye(len(z), dtype=torch.bool, device=z.device)
        if groups is not None:
            same |= (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
        nearest = (z @ z.T).masked_fill(same, -2.0).amax(1)  # cosine of the nearest other row
        has_neighbour = ~same.all(1)
        distance = (2 - 2 * nearest[has_neighbour]).clamp_min(1e-8).sqrt()  # ‖a − b‖, unit rows
        if not len(distance):
            return z.sum() * 0.0
        return -distance.log().mean()


MINING = ("batch_hard", "semi_hard")


class TripletLoss(nn.Module):
    """Triplet loss (Schroff et al. 2015, FaceNet) with in-batch mining.

        L = Σ_i max(‖f(a_i) − f(p_i)‖² − ‖f(a_i) − f(n_i)‖² + α, 0)

    f is L2-normalised, so squared distances lie in [0, 4]. Anchors are view 0, positives
    the other view of the same image. Negatives are mined among the other images of the
    batch (both views); with labels, images of the anchor's own class are never negatives
    and the batch-hard positive is the farthest same-class example.

    - batch_hard (Hermans et al. 2017): the closest negative.
    - semi_hard (FaceNet): the closest negative farther than the positive (d_ap < d_an);
      where none exists, the farthest negative, as TensorFlow Addons does.

    Shapes: anchors, positives (B, D), labels (B,) or None → scalar (`reduction`: "sum" as
    in the formula, or "mean" per triplet). After each call `last_stats` holds the mean
    d_ap, d_an and the share of triplets with a non-zero loss.
    """

    def __init__(
        self, margin: float = 0.2, *, mining: str = "semi_hard", reduction: str = "sum"
    ) -> None:
        super().__init__()
        if not margin > 0:
            raise ValueError(f"margin must be positive, got {margin}")
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.margin = margin
        self.mining = mining
        self.reduction = reduction
        self.last_stats: dict[str, float] = {}

    def forward(
        self, anchors: torch.Tensor, positives: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        a = F.normalize(anchors.float(), dim=1)  # (B, D)
        p = F.normalize(positives.float(), dim=1)  # (B, D)
        batch = len(a)
        candidates = torch.cat([a, p])  # (2B, D): every example of the batch
        d = torch.cdist(a, candidates).pow(2)  # (B, 2B) squared distances
        image = torch.arange(batch, device=a.device).repeat(2)  # (2B,) image of each column
        own = image[None, :] == torch.arange(batch, device=a.device)[:, None]  # (B, 2B)
        if labels is None:
            negative = ~own
        else:
            all_labels = labels.repeat(2)
            negative = all_labels[None, :] != labels[:, None]
        d_ap = (a - p).pow(2).sum(1)  # (B,)
        if labels is not None and self.mining == "batch_hard":
            same_class = ~negative
            same_class[:, :batch] &= ~torch.eye(batch, dtype=torch.bool, device=a.device)
            d_ap = d.masked_fill(~same_class, float("-inf")).amax(1)
        d_an = self.mine(d, negative, d_ap)  # (B,)
        has_negative = negative.any(1)
        losses = F.relu(d_ap - d_an + self.margin)[has_negative]
        with torch.no_grad():
            self.last_stats = {
                "d_ap": d_ap.mean().item(),
                "d_an": d_an[has_negative].mean().item() if has_negative.any() else 0.0,
                "active": (losses > 0).float().mean().item() if len(losses) else 0.0,
            }
        if not len(losses):
            return anchors.sum() * 0.0
        return losses.sum() if self.reduction == "sum" else losses.mean()

    def mine(self, d: torch.Tensor, negative: torch.Tensor, d_ap: torch.Tensor) -> torch.Tensor:
        inf = torch.tensor(float("inf"), device=d.device)
        hardest = torch.where(negative, d, inf).amin(1)
        if self.mining == "batch_hard":
            return hardest
        semi = negative & (d > d_ap[:, None])
        closest_semi = torch.where(semi, d, inf).amin(1)
        farthest = torch.where(negative, d, -inf).amax(1)
        return torch.where(semi.any(1), closest_semi, farthest)


def triplet_collapsed(stats: dict[str, float], margin: float) -> bool:
    """Collapse: every embedding at one point, so d_ap ≈ d_an ≈ 0 and the loss sits at α."""
    return stats.get("d_an", 1.0) < 0.01 * margin and stats.get("d_ap", 1.0) < 0.01 * margin
