"""The artifact's README.md model card and its pictures (loss, kNN monitor, embedding map)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.evaluate import format_table

RECIPE_NOTES = Path(__file__).with_name("RECIPE.md")


def _plot_history(history: list[dict], key: str, ylabel: str, path: Path) -> bool:
    points = [(h["epoch"], h[key]) for h in history if key in h]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(*zip(*points, strict=True), marker="o", markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _plot_embedding_map(embed: Callable[[np.ndarray], np.ndarray], path: Path, points: int) -> None:
    from sklearn.manifold import TSNE

    from training.data import load_fashion_mnist

    test = load_fashion_mnist("test")
    pick = np.random.default_rng(0).choice(len(test), min(points, len(test)), replace=False)
    h = embed(test.images[pick])
    perplexity = min(30.0, (len(pick) - 1) / 3)
    xy = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(h)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100)
    for c, name in enumerate(test.class_names):
        sel = test.labels[pick] == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=4, label=name, color=plt.cm.tab10(c))
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_title(f"t-SNE of {len(pick)} Fashion-MNIST test embeddings (colour = class)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def trained_on(training: dict) -> str:
    """Where the model was trained, from the run metadata in model.json's `training`."""
    runtime = training.get("runtime")
    if not runtime:  # artifacts from before the runtime was recorded
        return f"Trained on {training['device']}"
    where = "a GPU" if runtime["accelerator"] == "GPU" else "the CPU"
    cuda = f" (CUDA {runtime['cuda']})" if runtime.get("cuda") else ""
    return (
        f"Trained on {where}: {training['device']}, torch {runtime['torch']}{cuda}, "
        f"{runtime['precision']}"
    )


def write_card(
    out: Path,
    info: dict,
    history: list[dict],
    metrics: dict | None,
    embed: Callable[[np.ndarray], np.ndarray] | None,
) -> None:
    pictures = []
    if _plot_history(history, "loss", f"{info['loss']['name']} loss", out / "loss.png"):
        pictures.append("![training loss](loss.png)")
    if _plot_history(history, "knn_top1_k200_t0.1", "kNN top-1 (k=200, T=0.1)", out / "knn.png"):
        pictures.append("![kNN monitor](knn.png)")
    if embed is not None:
        _plot_embedding_map(
            embed, out / "embedding_map.png", points=min(2000, metrics["test_images"])
        )
        pictures.append("![embedding map](embedding_map.png)")
    training = info["training"]
    arch = info["architecture"]
    budget = training.get("config", {}).get("time_budget_s")
    fitted = f", the count fitted to a {budget:g} s time budget" if budget else ""
    lines = [
        f"# {info['name']}",
        "",
        "A contrastive image encoder trained by lookalike's `training/` **without labels**. "
        "It maps an image to a unit vector (`h`); the cosine score of two vectors says how "
        "alike the images look. Load it with the lookalike service (`LOOKALIKE_MODEL_DIR`).",
        "",
        "## Contract",
        "",
        f"- Input `images`: float32 (N, {arch['in_channels']}, {arch['image_size']}, "
        f"{arch['image_size']}), pixels in [0, 1], colour mode {info['input']['colour_mode']}, "
        f"resize rule `{info['input']['resize']}`.",
        f"- Output `embeddings`: float32 (N, {info['embedding_dim']}), L2-normalised.",
        f"- Version (sha256 of encoder.onnx): `{info['version']}`",
        "",
        "## Training",
        "",
        "- Commands (a resumed run lists each):",
        *[f"  - `{command}`" for command in training["commands"]],
        f"- Data: {training['data']['source']}, {training['data']['images']} images "
        "(labels unused by the loss)",
        f"- Loss: {info['loss']}",
        f"- Encoder: widths {arch['widths']}, depths {arch['depths']}, "
        f"`h` = last map pooled to {arch['pool_grid']}×{arch['pool_grid']} cells",
        f"- {trained_on(training)}",
        f"- Epochs: {training['epochs']} ({training['steps']} steps){fitted}; wall time "
        f"{training['wall_time_s'] / 60:.1f} min (training and the kNN monitor; export and "
        "evaluation not counted)",
        f"- Git commit: `{training['git_commit']}`",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["```", format_table(metrics), "```", ""]
        lines += [f"- `{name}`: {row['protocol']}" for name, row in metrics["metrics"].items()]
    else:
        lines.append("Not evaluated: the training data had no labelled evaluation split.")
    lines += ["", "## Pictures", "", *pictures, ""]
    if RECIPE_NOTES.exists() and info["name"] == "fashion-mnist":
        lines += [RECIPE_NOTES.read_text().strip(), ""]
    (out / "README.md").write_text("\n".join(lines))
