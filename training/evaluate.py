"""Evaluate an artifact on held-out images that it never trained on, beside two floors
computed the same way: raw pixels, and a random-init encoder of the same architecture; and for
a fine-tuned model (`--init`), beside its parent as it is, through its own ONNX graph.

    python -m training evaluate --model models/mine                  # on its own data
    python -m training evaluate --model models/mine --data ./photos --out eval/mine

Features are extracted once per feature set (the artifact through ONNX Runtime, exactly as the
service runs it) and every metric is computed on those matrices (DINO's eval_knn habit):

- Copy detection, always (training/copy_detection.py): no labels needed.
- When the data has labels (Fashion-MNIST, or a folder's subfolders), also kNN top-1: held-out
  images classified by a weighted vote of their k nearest training images (cosine), each vote
  weighted exp(score / T) (Wu et al. 2018, InstDisc; k=200, T=0.1) and again with DINO's
  k=20, T=0.07; and leave-one-out retrieval within the held-out images: recall@1 and mAP@R
  (Musgrave et al. 2020), an item counting as relevant when it has the query's class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from service.edits import EDIT_PROTOCOL
from service.imaging import InputSpec
from training.copy_detection import PROTOCOL as COPY_PROTOCOL
from training.copy_detection import (
    CopyDetectionSet,
    bank_images,
    build_queries,
    copy_detection_metrics,
)
from training.cross_style import METRICS as CROSS_STYLE_METRICS
from training.cross_style import StylePair, cross_style_metrics, load_pair
from training.cross_style import protocol as cross_style_protocol
from training.data import Split, load_data
from training.encoder import EncoderConfig
from training.features import random_init_model, torch_embedder
from training.parent import locate

KNN_SETTINGS = ((200, 0.1), (20, 0.07))
CHUNK = 1024
FEATURE_SETS = {
    "model": "model",
    "parent": "parent",
    "raw_pixels": "raw pixels",
    "random_init": "random init",
}
Embed = Callable[[np.ndarray], np.ndarray]
NEIGHBOUR_GRID = "neighbours.png"
CROSS_STYLE_GRID = "cross_style.png"
EMBEDDING_MAP = "embedding_map.png"


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
    if int(torch.bincount(test_y).max()) > 1:  # leave-one-out needs a class of two or more
        metrics.update(retrieval_metrics(test_h, test_y))
    return metrics


def pixel_features(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)


def onnx_embedder(model_dir: Path) -> Embed:
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


def resized(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (N, H, W, C) images stretched to height × width (antialiased bilinear)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def parent_embedder(info: dict) -> Embed | None:
    """The parent of a fine-tuned model (model.json's `parent`) as it is, when its folder still
    holds that version. A parent of another input size sees the images stretched to its own."""
    folder = locate(info["parent"]) if info.get("parent") else None
    if folder is None:
        return None
    embed = onnx_embedder(folder)
    size = InputSpec.from_dict(json.loads((folder / "model.json").read_text())["input"])
    if (size.height, size.width) == (info["input"]["height"], info["input"]["width"]):
        return embed
    return lambda images: embed(resized(images, size.height, size.width))


PROTOCOL = {
    **COPY_PROTOCOL,
    "knn_top1_k200_t0.1": "weighted kNN top-1, cosine, k=200, T=0.1, held-out vs training images",
    "knn_top1_k20_t0.07": "weighted kNN top-1, cosine, k=20, T=0.07, held-out vs training images",
    "recall_at_1": "leave-one-out recall@1 within the held-out images, same class = relevant",
    "map_at_r": "leave-one-out mAP@R within the held-out images, R = class size - 1",
}


@dataclass
class Evaluation:
    result: dict  # what metrics.json holds
    split: Split
    queries: CopyDetectionSet
    bank_h: np.ndarray  # (N_bank, D): the model's embeddings of split.train, then split.heldout
    query_h: np.ndarray  # (Q, D): the model's embeddings of the edited queries
    pair: StylePair | None = None  # the --cross-style folders, and the model's embeddings:
    pair_h: tuple[np.ndarray, np.ndarray] | None = None  # (N_a, D) and (N_b, D)


def unit(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """fp32 rows scaled to length 1, as a tensor."""
    return F.normalize(torch.as_tensor(features).float(), dim=1)


def feature_set_metrics(
    bank_h: np.ndarray, query_h: np.ndarray, split: Split, cds: CopyDetectionSet
) -> dict[str, float]:
    metrics = copy_detection_metrics(unit(bank_h), unit(query_h), cds)
    if split.train.labels is not None:
        n = len(split.train)
        train_y, heldout_y = (torch.from_numpy(d.labels) for d in (split.train, split.heldout))
        metrics.update(all_metrics(unit(bank_h[:n]), train_y, unit(bank_h[n:]), heldout_y))
    return metrics


def evaluate_split(model_dir: Path, split: Split, pair: StylePair | None = None) -> Evaluation:
    """Every metric for the artifact, raw pixels and a random-init twin, on one split, and
    cross-style retrieval on a pair of folders when given (training/cross_style.py)."""
    info = json.loads((Path(model_dir) / "model.json").read_text())
    cds = build_queries(split)
    random_init = random_init_model(
        EncoderConfig.from_dict(info["architecture"]), split.train.images
    )
    embedders: dict[str, Embed] = {
        "model": onnx_embedder(model_dir),
        "raw_pixels": lambda images: pixel_features(images).numpy(),
        "random_init": torch_embedder(random_init),
    }
    parent = parent_embedder(info)
    if parent:
        embedders["parent"] = parent
    bank = bank_images(split)
    features = {name: (embed(bank), embed(cds.queries)) for name, embed in embedders.items()}
    scores = {name: feature_set_metrics(*h, split, cds) for name, h in features.items()}
    pair_h: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if pair:
        for name, embed in embedders.items():
            h_a, h_b = pair_h[name] = (unit(embed(pair.a.images)), unit(embed(pair.b.images)))
            scores[name].update(cross_style_metrics(h_a, h_b, pair))
    result = {
        "data": split.train.source,
        "heldout": split.rule,
        "train_images": len(split.train),
        "heldout_images": len(split.heldout),
        "bank_images": len(bank),
        "queries": len(cds.queries),
        "edits": EDIT_PROTOCOL,
        "parent": info["parent"] if parent else None,
        "cross_style": pair.describe() if pair else None,
        "metrics": {
            metric: {
                **{name: scores[name][metric] for name in embedders},
                "protocol": (
                    cross_style_protocol(pair, CROSS_STYLE_METRICS[metric])
                    if pair and metric in CROSS_STYLE_METRICS
                    else PROTOCOL[metric]
                ),
            }
            for metric in scores["model"]
        },
    }
    model_pair = tuple(h.numpy() for h in pair_h["model"]) if pair else None
    return Evaluation(result, split, cds, *features["model"], pair, model_pair)


def evaluate_artifact(
    model_dir: Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    label_depth: int | None = None,
    cross_style: tuple[str, str] | None = None,
) -> Evaluation:
    """Evaluate on the data the artifact was trained on (its held-out part), or on any other
    folder, split by the same rule; and across styles on two folders when given."""
    info = json.loads((Path(model_dir) / "model.json").read_text())
    config = info["training"]["config"]
    own = data is None
    spec = InputSpec.from_dict(info["input"])
    split = load_data(
        config["data"] if own else data,
        spec,
        label_depth=config.get("label_depth", 1) if label_depth is None else label_depth,
    )
    return evaluate_split(
        model_dir,
        split.limited(config.get("limit") if own and limit is None else limit),
        load_pair(*cross_style, spec) if cross_style else None,
    )


def format_table(result: dict) -> str:
    columns = [key for key in FEATURE_SETS if key in result["metrics"]["copy_r1"]]
    lines = [f"{'metric':<22}" + "".join(f"{FEATURE_SETS[key]:>13}" for key in columns)]
    for name, row in result["metrics"].items():
        lines.append(f"{name:<22}" + "".join(f"{row[key]:>13.4f}" for key in columns))
    return "\n".join(lines)


def headline(result: dict) -> str:
    """The card's first line: copy-detection R@1 against the parent and the floors."""
    r1 = result["metrics"]["copy_r1"]
    parent = f"parent {result['parent']['name']} {r1['parent']:.1%}, " if "parent" in r1 else ""
    return (
        f"Copy detection R@1 {r1['model']:.1%} ({parent}raw pixels {r1['raw_pixels']:.1%}, "
        f"random init {r1['random_init']:.1%}): {result['queries']} edited held-out images, "
        f"each looked for among {result['bank_images']} originals"
    )


def write_evaluation(evaluation: Evaluation, out: Path) -> None:
    """metrics.json, the neighbour grid and, for labelled data, the embedding map."""
    from training.pictures import plot_embedding_map, plot_neighbour_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(evaluation.result, indent=2) + "\n")
    cds, split = evaluation.queries, evaluation.split
    plot_neighbour_grid(
        cds.queries,
        evaluation.query_h,
        bank_images(split),
        evaluation.bank_h,
        cds.groups,
        cds.groups[cds.targets],
        out / NEIGHBOUR_GRID,
    )
    if evaluation.pair and evaluation.pair_h:
        plot_cross_style_grid(evaluation.pair, *evaluation.pair_h, out / CROSS_STYLE_GRID)
    heldout = split.heldout
    if heldout.labels is not None:
        plot_embedding_map(
            evaluation.bank_h[len(split.train) :],
            heldout.labels,
            heldout.class_names,
            out / EMBEDDING_MAP,
            points=2000,
        )


def plot_cross_style_grid(pair: StylePair, h_a: np.ndarray, h_b: np.ndarray, path: Path) -> None:
    """Eight drawings of the first style, spread over the shared names, and their nearest
    drawings of the second; a green frame marks the namesake."""
    from training.pictures import GRID_QUERIES, plot_neighbour_grid

    pick = np.linspace(0, pair.shared - 1, min(GRID_QUERIES, pair.shared)).astype(int)
    plot_neighbour_grid(
        pair.a.images[pair.a_of_b[pick]],
        h_a[pair.a_of_b[pick]],
        pair.b.images,
        h_b,
        np.arange(len(pair.b)),
        pair.b_of_a[pick],
        path,
        query_label="query",
        title=f"{Path(pair.a.source).name} drawings and their nearest "
        f"{Path(pair.b.source).name} drawings (green: the same name)",
    )
