"""Evaluate an artifact on Fashion-MNIST, beside the raw-pixel floor computed the same way.

    python -m training evaluate --model models/fashion-mnist

Features are extracted once (through ONNX Runtime, exactly as the service will run them) and
every metric is computed on that matrix (DINO's eval_knn habit). The protocol:

- kNN top-1: test images classified by a weighted vote of their k nearest train images
  (cosine), each vote weighted exp(score / T) (Wu et al. 2018, InstDisc; k=200, T=0.1) and
  again with DINO's k=20, T=0.07. fp32.
- Retrieval, leave-one-out on the test set: recall@1 and mAP@R (Musgrave et al. 2020), an
  item counting as relevant when it has the query's class; R = that class's size − 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

KNN_SETTINGS = ((200, 0.1), (20, 0.07))
CHUNK = 1024


def knn_top1(
    train_h: torch.Tensor,
    train_y: torch.Tensor,
    test_h: torch.Tensor,
    test_y: torch.Tensor,
    *,
    k: int,
    temperature: float,
) -> float:
    """Weighted kNN accuracy; features must be L2-normalised (N, D) fp32, all tensors on one
    device (the GPU's kNN monitor stays on the GPU)."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_h))
    correct = 0
    for start in range(0, len(test_h), CHUNK):
        scores = test_h[start : start + CHUNK] @ train_h.T  # (b, N_train)
        top_scores, top_idx = scores.topk(k, dim=1)  # (b, k)
        weights = (top_scores / temperature).exp()
        votes = torch.zeros(len(top_idx), num_classes, device=top_idx.device)
        votes.scatter_add_(1, train_y[top_idx], weights)
        correct += (votes.argmax(1) == test_y[start : start + CHUNK]).sum().item()
    return correct / len(test_h)


def retrieval_metrics(h: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Leave-one-out recall@1 and mAP@R within one labelled set."""
    counts = torch.bincount(y)
    max_r = int(counts.max()) - 1
    recall_hits, ap_sum = 0.0, 0.0
    for start in range(0, len(h), CHUNK):
        q = slice(start, start + CHUNK)
        scores = h[q] @ h.T  # (b, N)
        rows = torch.arange(scores.shape[0])
        scores[rows, rows + start] = -float("inf")  # never retrieve the query itself
        ranked = scores.topk(max_r, dim=1).indices  # (b, max_r)
        relevant = (y[ranked] == y[q, None]).float()  # (b, max_r)
        r = counts[y[q]] - 1  # (b,)
        in_r = torch.arange(max_r)[None, :] < r[:, None]
        relevant = relevant * in_r
        precision_at_i = relevant.cumsum(1) / torch.arange(1, max_r + 1)[None, :]
        ap_sum += ((precision_at_i * relevant).sum(1) / r.clamp_min(1)).sum().item()
        recall_hits += relevant[:, 0].sum().item()
    return {"recall_at_1": recall_hits / len(h), "map_at_r": ap_sum / len(h)}


def all_metrics(
    train_h: torch.Tensor, train_y: torch.Tensor, test_h: torch.Tensor, test_y: torch.Tensor
) -> dict[str, float]:
    train_h = F.normalize(train_h.float(), dim=1)
    test_h = F.normalize(test_h.float(), dim=1)
    metrics = {
        f"knn_top1_k{k}_t{t:g}": knn_top1(train_h, train_y, test_h, test_y, k=k, temperature=t)
        for k, t in KNN_SETTINGS
    }
    metrics.update(retrieval_metrics(test_h, test_y))
    return metrics


def pixel_features(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)


def onnx_embedder(model_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Embed uint8 (N, H, W, C) images exactly as the service does: its own ONNX encoder."""
    from service.encoder import load_encoder

    encoder = load_encoder(model_dir)

    def embed(images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        return np.concatenate(
            [
                encoder.embed_pixels(list(images[s : s + batch_size]))
                for s in range(0, len(images), batch_size)
            ]
        )

    return embed


PROTOCOL = {
    "knn_top1_k200_t0.1": "weighted kNN top-1, cosine, k=200, T=0.1, fp32, test vs train images",
    "knn_top1_k20_t0.07": "weighted kNN top-1, cosine, k=20, T=0.07, fp32, test vs train images",
    "recall_at_1": "leave-one-out recall@1 within the test set, same class = relevant",
    "map_at_r": "leave-one-out mAP@R within the test set, R = class size - 1",
}


def evaluate_artifact(model_dir: Path, *, limit: int | None = None) -> dict:
    """Compute every metric for the artifact and the raw-pixel floor; write metrics.json."""
    from training.data import load_fashion_mnist

    # A smoke run's --limit shrinks both sets, so it stays quick; the counts are recorded.
    train, test = (
        load_fashion_mnist("train").subset(limit),
        load_fashion_mnist("test").subset(limit),
    )
    embed = onnx_embedder(model_dir)
    train_y, test_y = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    model = all_metrics(
        torch.from_numpy(embed(train.images)), train_y, torch.from_numpy(embed(test.images)), test_y
    )
    pixels = all_metrics(pixel_features(train.images), train_y, pixel_features(test.images), test_y)
    result = {
        "dataset": "fashion-mnist",
        "train_images": len(train),
        "test_images": len(test),
        "metrics": {
            name: {"model": model[name], "raw_pixels": pixels[name], "protocol": PROTOCOL[name]}
            for name in model
        },
    }
    (Path(model_dir) / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_table(result: dict) -> str:
    lines = [f"{'metric':<22}{'model':>8}{'raw pixels':>12}{'gain':>8}"]
    for name, row in result["metrics"].items():
        gain = row["model"] - row["raw_pixels"]
        lines.append(f"{name:<22}{row['model']:>8.4f}{row['raw_pixels']:>12.4f}{gain:>+8.4f}")
    return "\n".join(lines)
