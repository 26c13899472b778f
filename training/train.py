"""Contrastive training, top to bottom: data → two views → encoder → loss → artifact.

    python -m training train --data fashion-mnist --loss ntxent --epochs 30 --out models/fm
    python -m training train --data ./icons --group-by name     # same stem: positives too
    python -m training train --data ./photos --init models/icons  # fine-tune from a model
    torchrun --nproc-per-node 4 -m training train ...   # DDP; NT-Xent negatives from all ranks

Every default lives in `TrainConfig`. Each epoch prints one JSON line (also appended to
OUT/train_log.jsonl) and overwrites OUT/weights.safetensors, so `--resume` continues from
the next epoch. At the end the artifact is exported and evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from service.imaging import InputSpec
from training.augment import AugmentConfig, TwoViews
from training.checkpoint import WEIGHTS_FILE, load_checkpoint, read_meta, save_checkpoint
from training.copy_detection import (
    CopyDetectionSet,
    bank_images,
    build_queries,
    copy_detection_metrics,
)
from training.data import Dataset, Split, load_data
from training.encoder import ContrastiveModel, EncoderConfig
from training.evaluate import knn_top1, pixel_features, unit
from training.features import fit_whitening, to_pixels, unwhitened_features
from training.groups import describe, epoch_order, summary
from training.losses import NTXentLoss, TripletLoss, koleo_loss, triplet_collapsed
from training.parent import Parent

log = logging.getLogger(__name__)

MONITOR_QUERIES = 500  # held-out images the per-epoch copy-detection monitor queries with


@dataclass
class TrainConfig:
    # --- data ---
    data: str = "fashion-mnist"  # "fashion-mnist", or a folder of images (recursive)
    image_size: int | None = None  # None: 28 for fashion-mnist, 64 for a folder
    colour_mode: str | None = None  # "L" or "RGB"; None: L for fashion-mnist, RGB for a folder
    limit: int | None = None  # train on the first N images only (smoke runs)
    label_depth: int = 1  # evaluation labels from this many folder levels (1: top-level; 0: off)
    # Images of one group are positives of each other (training/groups.py): "name" (one file
    # stem in several subfolders) or a CSV of path,group rows; NT-Xent only.
    group_by: str | None = None
    # --- model ---
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage (each stage halves H, W)
    depths: tuple[int, ...] = (2, 2, 2)  # conv layers per stage
    pool_grid: int = 2  # `h` = last feature map pooled to grid×grid cells, flattened
    projection_dim: int = 128  # `z`, seen only by the loss
    # --- loss ---
    loss: str = "ntxent"  # "ntxent" (SimCLR) or "triplet"
    temperature: float = 0.2  # NT-Xent τ: 0.1–0.5; lower separates neighbours harder
    margin: float = 0.2  # triplet α, on squared distances of unit vectors (range 0–4)
    mining: str = "semi_hard"  # triplet negatives: "semi_hard" (stable) or "batch_hard"
    koleo_weight: float = 0.0  # SSCD's KoLeo term, spreading each view's batch; try 0.01–0.1
    # --- optimisation ---
    epochs: int = 30
    batch_size: int = 256  # global batch (split across DDP ranks); NT-Xent sees 2B−1 negatives
    lr: float = 2e-3  # AdamW peak learning rate, after linear warmup, then cosine to 0
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    # --- augmentation (None: AugmentConfig.for_images defaults) ---
    crop_min_scale: float | None = None  # smallest crop area; 0.35 by default
    colour_jitter: float | None = None  # SimCLR's strength s (0.5 = 0.4/0.4/0.4/0.1); see augment
    erase_p: float | None = None
    blur_p: float | None = None
    # --- run ---
    device: str = "auto"  # "auto" (CUDA if present), "cuda", "cpu"
    seed: int = 0
    out: str = "models/run"
    resume: bool = False  # continue from OUT/weights.safetensors at the next epoch
    # Start a new run from this artifact's weights (training/parent.py). The command line
    # takes its architecture and input unless flags set them (config_from_args).
    init: str | None = None
    max_steps_per_epoch: int | None = None  # cut epochs short (smoke tests)
    eval_every: int = 1  # monitor after epoch 1, every N epochs and the last
    # Fit the epoch count to this many seconds of training (monitor included); `epochs` is then
    # a cap. Fitted from measured epoch times while the lr warms up, so the cosine is not bent.
    time_budget_s: float | None = None
    # Evaluate the artifact on the held-out images at the end (copy detection over every
    # image: minutes for a big folder on a CPU). false: only the model files; run
    # `python -m training evaluate --model OUT` later.
    evaluate: bool = True
    # Export an int8 graph when it embeds held-out images like the float32 one (cosine ≥ 0.98
    # on average; training/quantize.py): about 1.7× the single-image speed on a CPU.
    int8: bool = True
    command: str = field(default="", repr=False)  # how this run was started (for the card)

    def __post_init__(self) -> None:
        checks = {
            "loss": self.loss in ("ntxent", "triplet"),
            "mining": self.mining in ("batch_hard", "semi_hard"),
            "device": self.device in ("auto", "cuda", "cpu") or self.device.startswith("cuda:"),
            "colour_mode": self.colour_mode in (None, "L", "RGB"),
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "temperature": self.temperature > 0,
            "margin": self.margin > 0,
            "limit": self.limit is None or self.limit >= 2,
            "label_depth": self.label_depth >= 0,
            "colour_jitter": self.colour_jitter is None or 0 <= self.colour_jitter <= 1.25,
            "eval_every": self.eval_every >= 1,
            "time_budget_s": self.time_budget_s is None or self.time_budget_s > 0,
            "koleo_weight": self.koleo_weight >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid value for {', '.join(bad)}: {self}")
        if self.init and self.resume:
            raise ValueError(
                "--init starts a new run from a model; --resume continues the run in --out: "
                "give one of them"
            )
        if self.group_by and self.loss == "triplet":
            raise ValueError(
                "--group-by needs --loss ntxent: group-mates become extra positives of NT-Xent "
                "(SupCon); the triplet loss takes one positive per anchor"
            )


def override(cfg: TrainConfig, key: str, text: str) -> TrainConfig:
    """Apply `key=value` from the command line; unknown keys and wrong types are refused."""
    hints = typing.get_type_hints(TrainConfig)
    if key not in hints or key == "command":
        known = ", ".join(sorted(k for k in hints if k != "command"))
        raise ValueError(f"unknown setting {key!r}; known: {known}")
    hint = hints[key]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = tuple(
        typing.get_origin(t) or t for t in (typing.get_args(hint) if is_union else (hint,))
    )
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        value = float(value) if int not in allowed else value
    if str in allowed and not isinstance(value, str) and value is not None:
        value = text  # a folder named "123" is still a path
    if not isinstance(value, allowed):
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        raise ValueError(f"{key} expects {names}, got {text!r}")
    return dataclasses.replace(cfg, **{key: value})


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epochs_within_budget(
    cfg: TrainConfig,
    *,
    epoch: int,
    elapsed_s: float,
    epoch_s: float,
    monitor_s: float,
    cap: int | None = None,
) -> int:
    """The most epochs (at least `epoch`, at most `cap`, else cfg.epochs) whose projected time
    fits cfg.time_budget_s, from the last epoch's time without the monitor (`epoch_s`) and the
    last monitor's time, which recurs every cfg.eval_every epochs. Each warmup epoch fits again
    against the run's own cap, so a slow first epoch (CUDA's start, kernel tuning) is not
    locked in."""
    assert cfg.time_budget_s is not None
    per_epoch = epoch_s + monitor_s / cfg.eval_every
    more = int((cfg.time_budget_s - elapsed_s) // per_epoch) if per_epoch > 0 else 0
    return max(epoch, min(cap or cfg.epochs, epoch + more))


def monitor(
    model: ContrastiveModel, split: Split, probe: CopyDetectionSet, device: torch.device
) -> dict:
    """The per-epoch check, on the training device: copy detection on the first
    MONITOR_QUERIES held-out images and, for labelled data, kNN top-1 (k=200, T=0.1) of the
    served (whitened) embedding and of `h` before whitening."""
    train_h = fit_whitening(model, split.train.images, device).to(device)
    heldout_h = unwhitened_features(model, split.heldout.images, device).to(device)
    query_h = unwhitened_features(model, probe.queries, device).to(device)
    with torch.no_grad():
        train_w, heldout_w = model.whiten(train_h), model.whiten(heldout_h)
        metrics = copy_detection_metrics(
            torch.cat([train_w, heldout_w]), model.whiten(query_h), probe
        )
    if split.train.labels is not None:
        train_y, heldout_y = (
            torch.from_numpy(d.labels).to(device) for d in (split.train, split.heldout)
        )
        metrics["knn_top1_k200_t0.1"] = knn_top1(
            train_w, train_y, heldout_w, heldout_y, k=200, temperature=0.1
        )
        metrics["knn_top1_k200_t0.1_unwhitened"] = knn_top1(
            train_h, train_y, heldout_h, heldout_y, k=200, temperature=0.1
        )
    return metrics


def pixel_floor(split: Split, probe: CopyDetectionSet) -> float:
    """Copy-detection R@1 of raw pixels on the monitor's queries: the line to beat."""
    bank, queries = (unit(pixel_features(x)) for x in (bank_images(split), probe.queries))
    return copy_detection_metrics(bank, queries, probe)["copy_r1"]


def epoch_line(metrics: dict, epochs: int, floor: float) -> str:
    """One line a person reads: loss, copy-detection R@1 against pixels, kNN when labelled."""
    parts = [f"epoch {metrics['epoch']:>3}/{epochs}", f"loss {metrics['loss']:.4f}"]
    if "copy_r1" in metrics:
        parts.append(f"copy R@1 {metrics['copy_r1']:6.1%} (pixels {floor:.1%})")
    if "knn_top1_k200_t0.1" in metrics:
        parts.append(f"kNN top-1 {metrics['knn_top1_k200_t0.1']:.1%}")
    parts.append(f"{metrics['images_per_s']:.0f} img/s, {metrics['time_s']:.0f} s")
    return "  ".join(parts)


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank, self.world, self.device = 0, 1, device
        if self.enabled:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", 0))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, value: int) -> int:
        """Rank 0's value, on every rank (decisions made from rank 0's clock)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], device=self.device)
        dist.broadcast(t, src=0)
        return int(t.item())

    def close(self) -> None:
        if self.enabled:
            dist.destroy_process_group()


def build_input_spec(cfg: TrainConfig) -> InputSpec:
    fmnist = cfg.data == "fashion-mnist"
    mode = cfg.colour_mode or ("L" if fmnist else "RGB")
    size = cfg.image_size or (28 if fmnist else 64)
    if fmnist and (size != 28 or mode != "L"):
        fix = f" (--init {cfg.init}'s input)" if cfg.init else ": drop --image-size / colour_mode"
        raise ValueError(f"fashion-mnist is 28×28 grayscale, not {size} px {mode}{fix}")
    return InputSpec(channels=1 if mode == "L" else 3, height=size, width=size, colour_mode=mode)


def build_augment(cfg: TrainConfig, spec: InputSpec) -> AugmentConfig:
    aug = AugmentConfig.for_images(channels=spec.channels, size=spec.height)
    if cfg.crop_min_scale is not None:
        aug = dataclasses.replace(aug, crop_scale=(cfg.crop_min_scale, 1.0))
    if cfg.colour_jitter is not None:
        aug = aug.with_jitter_strength(cfg.colour_jitter)
    if cfg.erase_p is not None:
        aug = dataclasses.replace(aug, erase_p=cfg.erase_p)
    if cfg.blur_p is not None:
        aug = dataclasses.replace(aug, blur_p=cfg.blur_p)
    return aug


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[:: max(1, len(images) // 10_000)].astype(np.float32) / 255.0
    mean = sample.mean(axis=(0, 1, 2))
    std = sample.std(axis=(0, 1, 2)).clip(min=1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def train_one_epoch(
    *,
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    views: TwoViews,
    data: Dataset,
    epoch: int,
    step: int,
    total_steps: int,
    cfg: TrainConfig,
    env: Distributed,
    gen: torch.Generator,
) -> tuple[dict, int]:
    """One pass over the data; returns the epoch's metrics and the next global step."""
    device = env.device
    per_rank = cfg.batch_size // env.world
    if data.groups is None:
        seeded = torch.Generator().manual_seed(cfg.seed + epoch)
        order = torch.randperm(len(data), generator=seeded).numpy()
    else:
        order = epoch_order(data.groups, np.random.default_rng([cfg.seed, epoch]))
    order = order[env.rank :: env.world]
    steps = len(order) // per_rank
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    warmup = int(cfg.warmup_epochs * total_steps / cfg.epochs)
    use_amp = device.type == "cuda"
    losses, collapsed_steps, events = [], 0, []
    start = time.perf_counter()
    # In a log file (nohup), redraw rarely instead of flooding it with carriage returns.
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch}",
        disable=not env.main,
        leave=False,
        mininterval=0.5 if sys.stderr.isatty() else 30,
    )
    model.train()
    for i in bar:
        lr = lr_at(step, total_steps, warmup, cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = np.sort(order[i * per_rank : (i + 1) * per_rank])
        x = to_pixels(data.images[index], device)  # (B, C, H, W)
        groups = None if data.groups is None else torch.from_numpy(data.groups[index]).to(device)
        x0, x1 = views(x, gen)  # (B, C, H, W) each
        if use_amp:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            x1 = x1.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            z = model(torch.cat([x0, x1]))  # (2B, projection_dim): one pass keeps BN stats shared
            z0, z1 = z.chunk(2)  # (B, projection_dim) each
            loss = loss_fn(z0, z1, groups)
            if cfg.koleo_weight:
                koleo = (koleo_loss(z0, groups) + koleo_loss(z1, groups)) / 2
                loss = loss + cfg.koleo_weight * koleo
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at epoch {epoch}, step {i} (global step {step}); "
                "try a lower --lr or a higher --temperature"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if isinstance(loss_fn, TripletLoss) and loss_fn.mining == "batch_hard":
            collapsed_steps = (
                collapsed_steps + 1 if triplet_collapsed(loss_fn.last_stats, loss_fn.margin) else 0
            )
            if collapsed_steps >= 20:
                log.warning(
                    "triplet collapse at step %d: loss stuck at the margin; "
                    "switching to semi-hard mining",
                    step,
                )
                events.append(f"collapse at step {step}: switched to semi_hard mining")
                loss_fn.mining = "semi_hard"
        step += 1
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    metrics = {
        "epoch": epoch,
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "lr": lr,
        "steps": steps,
        "images_per_s": steps * cfg.batch_size / max(seconds, 1e-9),
        "time_s": seconds,
    }
    if isinstance(loss_fn, TripletLoss):
        metrics.update({f"triplet_{k}": v for k, v in loss_fn.last_stats.items()})
    if events:
        metrics["events"] = events
    return metrics, step


def train(cfg: TrainConfig) -> Path:
    """Train, checkpoint every epoch, then export and evaluate the artifact in cfg.out."""
    env = Distributed(resolve_device(cfg.device))
    device = env.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its kernels once
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed + env.rank)
    spec = build_input_spec(cfg)
    parent = Parent.open(cfg.init) if cfg.init else None
    if parent:
        parent.encoder_for(cfg, spec)  # refuse settings its weights don't fit before reading data
    loaded = load_data(cfg.data, spec, label_depth=cfg.label_depth, group_by=cfg.group_by)
    split = loaded.limited(cfg.limit)
    data = split.train
    grouping = summary(data.groups, cfg.group_by) if cfg.group_by else None
    if cfg.batch_size > len(data):
        raise ValueError(
            f"--batch-size {cfg.batch_size} is larger than the data ({len(data)} images)"
        )
    if cfg.batch_size % env.world:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide by the {env.world} ranks")
    if data.images.shape[-1] != spec.channels:
        raise ValueError(
            f"data has {data.images.shape[-1]} channels, the model expects {spec.channels}"
        )

    weights = out / WEIGHTS_FILE
    if cfg.resume and not weights.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {weights}")
    model = new_model(cfg, spec, data, parent, weights if cfg.resume else None).to(device)
    encoder_cfg = model.cfg
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, step, history, wall_before, commands = 1, 0, [], 0.0, [cfg.command]
    lineage = parent.record() if parent else None
    if cfg.resume:
        meta = load_checkpoint(weights, model, optimizer)
        start_epoch, step = meta["epoch"] + 1, meta["step"]
        history, wall_before = meta["history"], meta["wall_time_s"]
        commands = [*meta.get("commands", [meta["train"]["command"]]), cfg.command]
        lineage = meta.get("parent")
        if env.main:
            print(f"resuming from {weights} at epoch {start_epoch}", file=sys.stderr)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_model: nn.Module = model
    if env.world > 1:
        if device.type == "cuda":
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn: nn.Module = (
        NTXentLoss(cfg.temperature, gather_distributed=env.world > 1)
        if cfg.loss == "ntxent"
        else TripletLoss(cfg.margin, mining=cfg.mining, reduction="mean")
    )
    augment = build_augment(cfg, spec)
    views = TwoViews(augment)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + env.rank)
    steps_per_epoch = len(data) // env.world // (cfg.batch_size // env.world)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs

    probe = build_queries(split, max_queries=MONITOR_QUERIES)
    floor = pixel_floor(split, probe)
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        n_params = sum(p.numel() for p in model.backbone.parameters())
        print(
            f"training on {device} ×{env.world}: {len(data)} images ({data.source}), "
            f"backbone {n_params} parameters, h dim {encoder_cfg.embedding_dim}, "
            f"epochs {start_epoch}..{cfg.epochs}\n"
            f"held out, never trained on: {split.rule}; each epoch, {len(probe.queries)} of "
            f"them, edited, look for their originals among {len(probe.groups)} images "
            f"(copy-detection R@1; raw pixels score {floor:.1%})",
            file=sys.stderr,
        )
        if parent:
            print(parent.describe(), file=sys.stderr)
        if grouping:
            print(describe(grouping), file=sys.stderr)
    run_start = time.perf_counter()
    monitor_s, epoch, epoch_cap = 0.0, start_epoch - 1, cfg.epochs
    while epoch < cfg.epochs:  # cfg.epochs may shrink to fit cfg.time_budget_s
        epoch += 1
        epoch_start = time.perf_counter()
        metrics, step = train_one_epoch(
            model=train_model,
            loss_fn=loss_fn,
            optimizer=optimizer,
            views=views,
            data=data,
            epoch=epoch,
            step=step,
            total_steps=total_steps,
            cfg=cfg,
            env=env,
            gen=gen,
        )
        monitor_start = time.perf_counter()
        monitor_now = epoch == 1 or epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        if env.main and monitor_now:
            metrics.update(monitor(model, split, probe, device))
            monitor_s = time.perf_counter() - monitor_start
        if cfg.time_budget_s and epoch <= max(1, int(cfg.warmup_epochs)):
            fitted = epochs_within_budget(
                cfg,
                epoch=epoch,
                elapsed_s=time.perf_counter() - run_start,
                epoch_s=monitor_start - epoch_start,
                monitor_s=monitor_s,
                cap=epoch_cap,
            )
            cfg = dataclasses.replace(cfg, epochs=env.agree(fitted))
            total_steps = steps_per_epoch * cfg.epochs
            metrics["epochs_fitted"] = cfg.epochs
        if env.main:
            history.append(metrics)
            meta = {
                "encoder": encoder_cfg.to_dict(),
                "train": dataclasses.asdict(cfg),
                "commands": commands,
                "augment": augment.to_dict(),
                "input": spec.to_dict(),
                "data": data.summary(),
                "grouping": grouping,
                "parent": lineage,
                "epoch": epoch,
                "step": step,
                "history": history,
                "wall_time_s": wall_before + time.perf_counter() - run_start,
                "device": describe_device(device, env.world),
                "runtime": describe_runtime(device),
            }
            save_checkpoint(weights, model, optimizer, meta)
            print(epoch_line(metrics, cfg.epochs, floor), flush=True)
            with open(out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
    if env.main:
        finish(out, model, optimizer, split, device, evaluate=cfg.evaluate)
    env.close()
    return out


def new_model(
    cfg: TrainConfig,
    spec: InputSpec,
    data: Dataset,
    parent: Parent | None,
    resume_from: Path | None,
) -> ContrastiveModel:
    """The run's model before its first step: --resume's architecture (its weights come with
    the optimiser state), the parent's weights (--init), or a fresh one whose input
    normalisation is fitted on the data."""
    if resume_from:
        return ContrastiveModel(EncoderConfig.from_dict(read_meta(resume_from)["encoder"]))
    if parent:
        model = ContrastiveModel(parent.encoder_for(cfg, spec))
        parent.load_into(model)
        return model
    mean, std = channel_stats(data.images)
    return ContrastiveModel(
        EncoderConfig(
            in_channels=spec.channels,
            image_size=spec.height,
            widths=cfg.widths,
            depths=cfg.depths,
            pool_grid=cfg.pool_grid,
            projection_dim=cfg.projection_dim,
            mean=mean,
            std=std,
        )
    )


def finish(
    out: Path,
    model: ContrastiveModel,
    optimizer: torch.optim.Optimizer,
    split: Split,
    device: torch.device,
    *,
    evaluate: bool = True,
) -> None:
    """Fit the whitening on the final weights, checkpoint, export and (unless told not to)
    evaluate the artifact."""
    from training.export import export_artifact, write_model_files

    weights = out / WEIGHTS_FILE
    fit_whitening(model, split.train.images, device)
    save_checkpoint(weights, model, optimizer, read_meta(weights))
    if evaluate:
        export_artifact(out, model.cpu().eval(), read_meta(weights), split)
    else:
        write_model_files(out, model.cpu().eval(), read_meta(weights), split)
        print(f"not evaluated (evaluate=false): python -m training evaluate --model {out}")


def export_existing(out: Path) -> None:
    """Re-export an artifact from its weights.safetensors (after code changes, say)."""
    weights = out / WEIGHTS_FILE
    meta = read_meta(weights)
    cfg = TrainConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["train"].items()}
    )
    model = ContrastiveModel(EncoderConfig.from_dict(meta["encoder"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    load_checkpoint(weights, model, optimizer)
    meta["commands"] = [
        *meta.get("commands", [cfg.command]),
        f"python -m training export --model {out}",
    ]
    save_checkpoint(weights, model, optimizer, meta)
    spec = InputSpec.from_dict(meta["input"])
    split = load_data(cfg.data, spec, label_depth=cfg.label_depth).limited(cfg.limit)
    finish(out, model, optimizer, split, torch.device("cpu"))


def describe_device(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world}× {torch.cuda.get_device_name(device)}"
    return f"{world}× CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def describe_runtime(device: torch.device) -> dict:
    """Where and how the model was trained, for model.json and the card."""
    gpu = device.type == "cuda"
    return {
        "accelerator": "GPU" if gpu else "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if gpu else None,
        "precision": "bf16 autocast, channels_last" if gpu else "fp32",
    }


def command_line(argv: list[str]) -> str:
    return "python -m training " + shlex.join(argv)
