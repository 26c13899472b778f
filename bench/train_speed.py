"""Training speed: our pipeline beside lightly's SimCLR pipeline, same backbone, batch and torch.

    make bench-venv    # .venv-bench: torch 2.14.1 + torchvision 0.29.1 + lightly, for both
    .venv-bench/bin/python bench/train_speed.py [--steps 40] [--workers 0,1,2] [--epochs 10]

Both pipelines train the same `ContrastiveModel` (the shipped widths, same seed, AdamW, the same
warmup + cosine schedule and τ) on Fashion-MNIST; only the data path and the loss differ:

- ours: the training package's own `train_one_epoch` — uint8 batches sliced from memory,
  batched tensor augmentations (`training.augment`), our `NTXentLoss`;
- lightly: its `SimCLRTransform` on PIL images in a `DataLoader` with workers, its `NTXentLoss`.
  The transform is configured as lightly's own CIFAR-10 benchmark does for small images
  (`cj_strength=0.5`, no blur), at 28 px, grayscale, no normalisation (the model does that).

Two measurements, one pipeline at a time in this one process:
1. images/s over `--steps` optimiser steps after `--warmup` steps, for each worker count;
2. time-to-accuracy: train (lightly with its fastest worker count) epoch by epoch, with the kNN
   monitor (k=200, T=0.1, the same code for both) after each, until it passes every one of
   `--thresholds`, the `--epochs` schedule ends or `--budget-min` minutes of training have
   passed. The clock stops while the monitor runs.
Writes RESULTS/train_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from report import add_results_argument, table, write

from service.imaging import InputSpec
from training.augment import TwoViews
from training.copy_detection import build_queries
from training.data import Dataset, Split, load_fashion_mnist
from training.encoder import ContrastiveModel, EncoderConfig
from training.losses import NTXentLoss
from training.train import (
    MONITOR_QUERIES,
    Distributed,
    TrainConfig,
    build_augment,
    channel_stats,
    lr_at,
    monitor,
    resolve_device,
    train_one_epoch,
)

SPEC = InputSpec(channels=1, height=28, width=28, colour_mode="L")
MONITOR = "knn_top1_k200_t0.1"


@dataclasses.dataclass
class Run:
    """One model and optimiser, trained step by step by either pipeline."""

    model: ContrastiveModel
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    device: torch.device
    step: int = 0
    epoch: int = 0
    loader: torch.utils.data.DataLoader | None = None  # lightly's, kept across epochs


def new_run(cfg: TrainConfig, data: Dataset, device: torch.device) -> Run:
    torch.manual_seed(cfg.seed)
    mean, std = channel_stats(data.images)
    encoder_cfg = EncoderConfig(
        in_channels=1, image_size=28, widths=cfg.widths, depths=cfg.depths, mean=mean, std=std
    )
    model = ContrastiveModel(encoder_cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return Run(model, optimizer, cfg, device)


def ours(run: Run, data: Dataset, steps: int | None, warmup: int) -> tuple[int, float]:
    """Our pipeline: `warmup` untimed steps, then an epoch (or `steps`): (images, seconds)."""
    if warmup:
        run_epoch(run, data, warmup)
    return run_epoch(run, data, steps)


def run_epoch(run: Run, data: Dataset, steps: int | None) -> tuple[int, float]:
    run.epoch += 1
    cfg = dataclasses.replace(run.cfg, max_steps_per_epoch=steps)
    metrics, run.step = train_one_epoch(
        model=run.model,
        loss_fn=NTXentLoss(cfg.temperature),
        optimizer=run.optimizer,
        views=TwoViews(build_augment(cfg, SPEC)),
        data=data,
        epoch=run.epoch,
        step=run.step,
        total_steps=total_steps(cfg, data),
        cfg=cfg,
        env=Distributed(run.device),
        gen=torch.Generator(device=run.device).manual_seed(cfg.seed * 1000 + run.epoch),
    )
    return metrics["steps"] * cfg.batch_size, metrics["time_s"]


class PILImages(torch.utils.data.Dataset):
    """Fashion-MNIST as a user of lightly would feed it: one PIL image per item."""

    def __init__(self, images: np.ndarray, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i, :, :, 0], mode="L"))


def lightly_loader(data: Dataset, cfg: TrainConfig, workers: int) -> torch.utils.data.DataLoader:
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=28, cj_strength=0.5, gaussian_blur=0.0, normalize=None)
    return torch.utils.data.DataLoader(
        PILImages(data.images, transform),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,  # workers start once per run, not once per epoch
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def lightly(
    run: Run, data: Dataset, steps: int | None, warmup: int, workers: int
) -> tuple[int, float]:
    """lightly's pipeline: `warmup` untimed steps, then an epoch (or `steps`): (images, seconds)."""
    from lightly.loss import NTXentLoss as LightlyNTXent

    cfg, device = run.cfg, run.device
    if run.loader is None:
        run.loader = lightly_loader(data, cfg, workers)
    loss_fn = LightlyNTXent(temperature=cfg.temperature)
    total = total_steps(cfg, data)
    warmup_steps = int(cfg.warmup_epochs * total / cfg.epochs)
    use_amp = device.type == "cuda"
    run.model.train()
    run.epoch += 1
    done, start = 0, time.perf_counter()
    for i, (x0, x1) in enumerate(run.loader):
        if i == warmup:
            done, start = 0, time.perf_counter()
        if steps is not None and i >= warmup + steps:
            break
        for group in run.optimizer.param_groups:
            group["lr"] = lr_at(run.step, total, warmup_steps, cfg.lr)
        x = torch.cat([x0, x1]).to(device, non_blocking=True)
        if use_amp:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            z0, z1 = run.model(x).chunk(2)
            loss = loss_fn(z0, z1)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.step += 1
        done += len(x0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done, time.perf_counter() - start


def total_steps(cfg: TrainConfig, data: Dataset) -> int:
    return len(data) // cfg.batch_size * cfg.epochs


Pipeline = Callable[[Run, Dataset, int | None, int], tuple[int, float]]


def pipelines(names: list[str], workers: list[int]) -> dict[str, Pipeline]:
    found: dict[str, Pipeline] = {}
    for name in names:
        if name == "ours":
            found["ours"] = ours
        elif name == "lightly":
            for w in workers:
                found[f"lightly/{w} workers"] = lambda run, data, steps, warmup, w=w: lightly(
                    run, data, steps, warmup, w
                )
        else:
            raise SystemExit(f"unknown pipeline {name!r}: use ours and/or lightly")
    return found


def throughput(pipeline: Pipeline, cfg, data, device, warmup: int, steps: int) -> float:
    images, seconds = pipeline(new_run(cfg, data, device), data, steps, warmup)
    return images / seconds


def time_to_accuracy(
    pipeline: Pipeline, cfg, data, test, device, thresholds: list[float], budget_s: float
) -> dict:
    """Train epoch by epoch until the kNN monitor passes every threshold or the budget is spent."""
    run = new_run(cfg, data, device)
    split = Split(data, test, "the test images")
    probe = build_queries(split, max_queries=MONITOR_QUERIES)
    trained, curve, seconds_to = 0.0, [], {t: None for t in thresholds}
    for epoch in range(1, cfg.epochs + 1):
        _, seconds = pipeline(run, data, None, 0)
        trained += seconds
        accuracy = monitor(run.model, split, probe, device)[MONITOR]
        curve.append({"epoch": epoch, "train_s": round(trained, 1), MONITOR: accuracy})
        print(json.dumps(curve[-1]), file=sys.stderr, flush=True)
        for t in thresholds:
            if seconds_to[t] is None and accuracy >= t:
                seconds_to[t] = round(trained, 1)
        if accuracy >= max(thresholds) or trained >= budget_s:
            break
    return {"seconds_to": {f"{t:g}": s for t, s in seconds_to.items()}, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipelines", default="ours,lightly")
    parser.add_argument("--workers", default="0,1,2", help="DataLoader workers tried for lightly")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--widths", default="48,96,192", help="the shipped model's backbone")
    parser.add_argument("--depths", default="2,2,2", help="conv layers per stage")
    parser.add_argument("--warmup", type=int, default=3, help="steps run before timing")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per pipeline")
    parser.add_argument("--epochs", type=int, default=10, help="schedule length (0: no TTA)")
    parser.add_argument("--thresholds", default="0.82,0.85,0.87,0.88", help="kNN top-1 targets")
    parser.add_argument("--budget-min", type=float, default=20.0)
    parser.add_argument("--limit", type=int, help="train and test images (smoke runs)")
    parser.add_argument("--device", default="auto")
    add_results_argument(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training does; both pipelines share it
    cfg = TrainConfig(
        batch_size=args.batch_size,
        widths=tuple(int(w) for w in args.widths.split(",")),
        depths=tuple(int(d) for d in args.depths.split(",")),
        epochs=max(1, args.epochs),
        device=device.type,
    )
    data = load_fashion_mnist("train").subset(args.limit)
    test = load_fashion_mnist("test").subset(args.limit)
    workers = [int(w) for w in args.workers.split(",")]
    chosen = pipelines(args.pipelines.split(","), workers)
    thresholds = [float(t) for t in args.thresholds.split(",")]

    rows = []
    for name, pipeline in chosen.items():
        rate = throughput(pipeline, cfg, data, device, args.warmup, args.steps)
        rows.append({"pipeline": name, "images_per_s": rate})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = next((r["images_per_s"] for r in rows if r["pipeline"] == "ours"), None)
    for row in rows:
        row["ours_vs_this"] = base / row["images_per_s"] if base else None
    print(f"\nimages/s on {device} (batch {cfg.batch_size}, {args.steps} steps after warmup)")
    print(
        table(
            rows,
            [
                ("pipeline", "pipeline"),
                ("images_per_s", "images/s"),
                ("ours_vs_this", "ours ÷ this"),
            ],
        )
    )

    tta: dict[str, dict] = {}
    if args.epochs:
        fastest_lightly = max(
            (r for r in rows if r["pipeline"].startswith("lightly")),
            key=lambda r: r["images_per_s"],
            default=None,
        )
        contenders = [n for n in chosen if n == "ours"]
        if fastest_lightly:
            contenders.append(fastest_lightly["pipeline"])
        for name in contenders:
            print(f"time-to-accuracy: {name}", file=sys.stderr)
            tta[name] = time_to_accuracy(
                chosen[name], cfg, data, test, device, thresholds, args.budget_min * 60
            )
        print(f"\ntraining seconds to kNN top-1 ≥ threshold (cap {args.budget_min:g} min each)")
        tta_rows = [
            {
                "pipeline": name,
                "epochs": len(r["curve"]),
                "last": r["curve"][-1][MONITOR],
                **{t: r["seconds_to"][t] or "not reached" for t in r["seconds_to"]},
            }
            for name, r in tta.items()
        ]
        columns = [("pipeline", "pipeline"), ("epochs", "epochs"), ("last", "last kNN")]
        print(table(tta_rows, columns + [(f"{t:g}", f"≥ {t:g}") for t in thresholds]))
    write(
        args.results,
        "train_speed",
        {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "config": {**dataclasses.asdict(cfg), **vars(args), "results": str(args.results)},
            "throughput": rows,
            "time_to_accuracy": tta,
        },
    )


if __name__ == "__main__":
    main()
