"""NT-Xent against a slow reference from SimCLR's Algorithm 1, its grouped (SupCon) form
against a slow reference of Khosla et al.'s L_out and against plain NT-Xent, KoLeo; triplet loss
by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from testkit.losses import reference_ntxent
from training.losses import NTXentLoss, TripletLoss, koleo_loss, triplet_collapsed


@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("dim", [3, 32])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_ntxent_matches_simclr_algorithm_1(batch: int, dim: int, tau: float) -> None:
    gen = torch.Generator().manual_seed(batch * 100 + dim)
    z0, z1 = torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, generator=gen)
    got = NTXentLoss(tau)(z0.double(), z1.double()).item()
    assert got == pytest.approx(reference_ntxent(z0, z1, tau), rel=1e-5)


def test_ntxent_identical_views_with_orthogonal_negatives_has_known_value() -> None:
    batch, tau = 4, 0.5
    z = torch.eye(8)[:batch]  # orthonormal rows: every negative scores 0, the positive 1
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * batch - 2))
    assert NTXentLoss(tau)(z, z.clone()).item() == pytest.approx(expected, rel=1e-6)


def test_ntxent_gradients_are_finite_even_for_tiny_temperature() -> None:
    z0 = torch.randn(8, 16, requires_grad=True)
    z1 = torch.randn(8, 16, requires_grad=True)
    loss = NTXentLoss(0.01)(z0, z1)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all()
    assert z0.grad.abs().sum() > 0


def test_ntxent_is_stable_under_bf16_autocast() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 20, generator=gen)
    layer = torch.nn.Linear(20, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
        assert z.dtype == torch.bfloat16
        loss = NTXentLoss(0.1)(*z.chunk(2))
    loss.backward()
    fp32 = NTXentLoss(0.1)(*layer(x).chunk(2))
    assert torch.isfinite(loss) and torch.isfinite(layer.weight.grad).all()
    assert loss.item() == pytest.approx(fp32.item(), rel=0.02)


def test_ntxent_runs_in_fp32_under_autocast() -> None:
    z = torch.randn(32, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = NTXentLoss(0.1)(*z.chunk(2))
    exact = NTXentLoss(0.1)(*z.float().chunk(2))
    assert under.dtype == torch.float32
    assert under.item() == pytest.approx(exact.item(), rel=1e-6)  # a bf16 matmul is ~1e-3 off


def test_ntxent_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="B, D"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))


def reference_supcon(z0: torch.Tensor, z1: torch.Tensor, groups: list[int], tau: float) -> float:
    """SupCon's L_out with loops: rows 0..B-1 are view 0, B..2B-1 view 1; the positives of a
    row are the other view and both views of its group-mates (group -1: none)."""
    z = F.normalize(torch.cat([z0, z1]).double(), dim=1).tolist()
    n, batch = len(z), len(z0)

    def sim(i: int, j: int) -> float:
        return sum(x * y for x, y in zip(z[i], z[j], strict=True))

    total = 0.0
    for i in range(n):
        image = i % batch
        positives = [
            j
            for j in range(n)
            if j != i
            and (j % batch == image or (groups[image] >= 0 and groups[j % batch] == groups[image]))
        ]
        denominator = sum(math.exp(sim(i, k) / tau) for k in range(n) if k != i)
        total += -sum(math.log(math.exp(sim(i, p) / tau) / denominator) for p in positives) / len(
            positives
        )
    return total / n


def _pair(batch: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=gen), torch.randn(batch, dim, generator=gen)


@pytest.mark.parametrize("batch", [2, 7, 16])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_grouped_ntxent_without_group_mates_is_ntxent(batch: int, tau: float) -> None:
    # The grouped path (a positives mask) against cross-entropy: equal to fp32 rounding.
    z0, z1 = _pair(batch, 12, batch)
    plain = NTXentLoss(tau)(z0, z1).item()
    nobody = torch.full((batch,), -1, dtype=torch.int64)
    everyone_alone = torch.arange(batch) * 3 + 5  # groups, but no two images share one
    assert NTXentLoss(tau)(z0, z1, nobody).item() == pytest.approx(plain, rel=1e-6)
    assert NTXentLoss(tau)(z0, z1, everyone_alone).item() == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("groups", [[0, 0, -1, 1, 1, 1], [2, -1, 2, -1, -1, 2], [0] * 6])
def test_grouped_ntxent_matches_supcon_l_out(groups: list[int]) -> None:
    z0, z1 = _pair(len(groups), 5, 1)
    got = NTXentLoss(0.3)(z0, z1, torch.tensor(groups)).item()
    assert got == pytest.approx(reference_supcon(z0, z1, groups, 0.3), rel=1e-6)


def test_an_ungrouped_image_keeps_its_ntxent_term_beside_a_group() -> None:
    # Rows of an ungrouped image have one positive, so with groups [0, 0, -1] the loss is the
    # mean of the four grouped rows' L_out and the two ungrouped rows' NT-Xent terms.
    z0, z1 = _pair(3, 4, 2)
    grouped = reference_supcon(z0, z1, [0, 0, -1], 0.2)
    alone = reference_supcon(z0, z1, [-1, -1, -1], 0.2)  # plain NT-Xent, per image equal rows
    got = NTXentLoss(0.2)(z0, z1, torch.tensor([0, 0, -1])).item()
    assert got == pytest.approx(grouped, rel=1e-6)
    assert got != pytest.approx(alone, rel=1e-3)  # the group changed the grouped rows' terms


def test_group_mates_pull_together() -> None:
    z0, z1 = _pair(6, 8, 3)
    z0.requires_grad_(True)
    NTXentLoss(0.2)(z0, z1, torch.tensor([0, 0, -1, -1, -1, -1])).backward()
    step = F.normalize(z0 - 0.5 * z0.grad, dim=1)
    before = F.cosine_similarity(z0[0], z0[1], dim=0)
    assert F.cosine_similarity(step[0], step[1], dim=0) > before


def test_grouped_ntxent_runs_in_fp32_under_autocast_and_checks_shapes() -> None:
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    groups = torch.tensor([0, 0, 1, 1, -1, -1, -1, -1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = NTXentLoss(0.1)(*z.chunk(2), groups)
    assert under.dtype == torch.float32
    assert under.item() == pytest.approx(NTXentLoss(0.1)(*z.float().chunk(2), groups).item())
    with pytest.raises(ValueError, match="groups"):
        NTXentLoss()(*z.float().chunk(2), groups[:3])


def test_koleo_is_finite_and_pushes_points_apart() -> None:
    gen = torch.Generator().manual_seed(0)
    centre = torch.randn(1, 16, generator=gen)
    z = (centre + 0.05 * torch.randn(12, 16, generator=gen)).requires_grad_(True)  # a clump
    loss = koleo_loss(z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()

    def nearest(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(F.normalize(x, dim=1), F.normalize(x, dim=1)).fill_diagonal_(9)
        return d.amin(1).mean()

    moved = z.detach() - 0.01 * z.grad
    assert koleo_loss(moved) < loss
    assert nearest(moved) > nearest(z.detach())


def test_koleo_leaves_group_mates_alone() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 coincide
    assert koleo_loss(z) > 5  # rows 0 and 1 are each other's neighbour at distance ~0
    groups = torch.tensor([4, 4, -1])
    assert koleo_loss(z, groups).item() == pytest.approx(-math.log(math.sqrt(2)))
    assert koleo_loss(z[:2], groups[:2]).item() == 0.0  # nobody has a neighbour


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=1)


def test_triplet_matches_hand_computation() -> None:
    # Two images in 2-D. Anchor 0 = (1,0), its positive at 30°, image 1 at 90° (a=(0,1)) and
    # 60° (p). Squared distance of unit vectors at angle θ: 2 − 2cos θ.
    a = _unit([1, 0], [0, 1])
    p = _unit([math.cos(math.pi / 6), math.sin(math.pi / 6)], [0.5, math.sqrt(3) / 2])
    d = lambda theta: 2 - 2 * math.cos(theta)  # noqa: E731
    margin = 1.0
    # Anchor 0: d_ap = d(30°); negatives at 90° and 60° → hardest 60°.
    # Anchor 1 (90°): d_ap = d(30°); negatives a0 (0°) and p0 (30°) lie 90° and 60° away.
    expected = 2 * max(d(math.pi / 6) - d(math.pi / 3) + margin, 0)
    loss = TripletLoss(margin, mining="batch_hard")(a, p)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    mean = TripletLoss(margin, mining="batch_hard", reduction="mean")(a, p)
    assert mean.item() == pytest.approx(expected / 2, rel=1e-6)


def test_triplet_is_zero_when_every_negative_is_far() -> None:
    z = torch.eye(6)[:3]  # positives identical to anchors, negatives orthogonal (d = 2)
    for mining in ("batch_hard", "semi_hard"):
        assert TripletLoss(0.5, mining=mining)(z, z.clone()).item() == 0.0


def test_triplet_equals_the_margin_at_collapse() -> None:
    z = torch.ones(8, 4)  # every embedding at the same point
    loss_fn = TripletLoss(0.3, mining="batch_hard")
    assert loss_fn(z, z.clone()).item() == pytest.approx(8 * 0.3)
    assert triplet_collapsed(loss_fn.last_stats, 0.3)
    assert not triplet_collapsed({"d_ap": 0.1, "d_an": 0.8}, 0.3)


def test_batch_hard_miner_picks_the_closest_valid_negative() -> None:
    loss_fn = TripletLoss(0.2, mining="batch_hard")
    d = torch.tensor([[0.0, 0.9, 0.3, 0.1]])
    valid = torch.tensor([[False, True, True, False]])  # the 0.1 entry is not a negative
    assert loss_fn.mine(d, valid, torch.tensor([0.2])).item() == pytest.approx(0.3)


def test_semi_hard_miner_picks_the_closest_negative_beyond_the_positive() -> None:
    loss_fn = TripletLoss(0.2, mining="semi_hard")
    d = torch.tensor([[0.0, 0.9, 0.3, 0.5, 0.1]])
    valid = torch.tensor([[False, True, True, True, True]])
    assert loss_fn.mine(d, valid, torch.tensor([0.4])).item() == pytest.approx(0.5)
    # No negative beyond the positive: fall back to the farthest one.
    assert loss_fn.mine(d, valid, torch.tensor([0.95])).item() == pytest.approx(0.9)


def test_triplet_unlabelled_mode_uses_other_images_as_negatives() -> None:
    # Images 0 and 1 are near-duplicates. Without labels image 1 is a (hard) negative of 0.
    a = _unit([1, 0, 0], [1, 0.05, 0], [0, 0, 1])
    loss = TripletLoss(0.2, mining="batch_hard")(a, a.clone())
    assert loss.item() > 0.1


def test_triplet_labelled_mode_never_uses_same_class_as_negative() -> None:
    a = _unit([1, 0, 0], [1, 0.05, 0], [0, 0, 1])
    labels = torch.tensor([0, 0, 1])
    semi = TripletLoss(0.2, mining="semi_hard")(a, a.clone(), labels)
    assert semi.item() == 0.0  # the near-duplicate shares the class: no longer a negative
    hard = TripletLoss(0.2, mining="batch_hard")
    loss = hard(a, a.clone(), labels)  # batch-hard positive: the farthest same-class example
    assert loss.item() == 0.0
    assert hard.last_stats["d_ap"] > 0


def test_triplet_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="margin"):
        TripletLoss(0.0)
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(0.2, mining="hardest")
