"""Slow references for the losses, written with loops from the papers."""

from __future__ import annotations

import math

import torch


def reference_ntxent(z0: torch.Tensor, z1: torch.Tensor, tau: float) -> float:
    """SimCLR Algorithm 1, written with loops: pairs (2k-1, 2k) are two views of image k."""
    z = []
    for a, b in zip(z0.tolist(), z1.tolist(), strict=True):
        z += [a, b]
    n = len(z)

    def sim(i: int, j: int) -> float:
        dot = sum(x * y for x, y in zip(z[i], z[j], strict=True))
        return dot / (math.sqrt(sum(x * x for x in z[i])) * math.sqrt(sum(x * x for x in z[j])))

    def ell(i: int, j: int) -> float:
        denominator = sum(math.exp(sim(i, k) / tau) for k in range(n) if k != i)
        return -math.log(math.exp(sim(i, j) / tau) / denominator)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n // 2)) / n
