"""Two gloo ranks on the CPU give the same NT-Xent loss and gradients as one process on the
concatenated batch: the all_gather carries gradient, and DDP averages it. The same with groups
(SupCon), whose ids are gathered too: group-mates on the other rank are positives."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.losses import NTXentLoss

BATCH, DIM_IN, DIM_OUT, WORLD = 6, 10, 8, 2
# Rank 0 holds images 0-5, rank 1 images 6-11; groups 0, 1 and 2 span both ranks.
GROUPS = torch.tensor([0, 1, -1, 2, 0, -1, 1, 2, -1, 3, 3, 0])


def _inputs() -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(BATCH * WORLD, DIM_IN, generator=gen)
    x1 = x0 + 0.3 * torch.randn(BATCH * WORLD, DIM_IN, generator=gen)
    torch.manual_seed(1)
    return x0, x1, nn.Linear(DIM_IN, DIM_OUT)


def _rank(rank: int, init_file: str, out_dir: str, grouped: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    x0, x1, layer = _inputs()
    model = nn.parallel.DistributedDataParallel(layer)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    groups = GROUPS[mine] if grouped else None
    loss = NTXentLoss(0.2, gather_distributed=True)(model(x0[mine]), model(x1[mine]), groups)
    loss.backward()
    losses = [torch.zeros(()) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    np.save(Path(out_dir) / f"loss{rank}.npy", torch.stack(losses).numpy())
    np.save(Path(out_dir) / f"grad{rank}.npy", layer.weight.grad.numpy())
    dist.barrier()  # neither rank tears down gloo while the other still talks to it
    dist.destroy_process_group()
    # Leave without C++ static teardown: gloo's leftover threads abort it now and then
    # ("terminate called without an active exception", SIGABRT) after the work is saved.
    os._exit(0)


@pytest.mark.parametrize("grouped", [False, True])
def test_two_gloo_ranks_match_one_process_on_the_whole_batch(tmp_path: Path, grouped: bool) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    mp.start_processes(
        _rank,
        args=(str(tmp_path / "init"), str(tmp_path), grouped),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )

    x0, x1, layer = _inputs()
    loss = NTXentLoss(0.2)(layer(x0), layer(x1), GROUPS if grouped else None)
    loss.backward()

    for rank in range(WORLD):
        rank_losses = np.load(tmp_path / f"loss{rank}.npy")
        # Each rank's loss covers its own rows; their mean is the whole batch's loss.
        assert rank_losses.mean() == pytest.approx(loss.item(), rel=1e-5)
        np.testing.assert_allclose(
            np.load(tmp_path / f"grad{rank}.npy"), layer.weight.grad.numpy(), rtol=1e-4, atol=1e-6
        )
