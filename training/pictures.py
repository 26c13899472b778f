"""The pictures of a model card: curves over epochs, the neighbour grid, the embedding map."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

GRID_QUERIES = 8
GRID_NEIGHBOURS = 8


def plot_history(
    history: list[dict], key: str, ylabel: str, path: Path, floors: dict[str, float] | None = None
) -> bool:
    """`key` over the epochs that logged it, with dashed lines for `floors`; False if none did."""
    points = [(h["epoch"], h[key]) for h in history if key in h]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label="model")
    for (label, value), style in zip((floors or {}).items(), ("--", ":", "-."), strict=False):
        ax.axhline(value, linestyle=style, color="grey", label=label)
    if floors:
        ax.legend(fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _show(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[:, :, 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_neighbour_grid(
    queries: np.ndarray,
    query_h: np.ndarray,
    bank: np.ndarray,
    bank_h: np.ndarray,
    bank_groups: np.ndarray,
    query_groups: np.ndarray,
    path: Path,
    *,
    query_label: str = "query (edited)",
    title: str = "Held-out queries and their nearest images (green: the original)",
) -> None:
    """Each query, then its nearest bank images with their cosine scores; a green frame marks
    the image it should find (for an edited query its original, or an identical copy of it:
    the same group)."""
    n = min(GRID_QUERIES, len(queries))
    scores = query_h[:n] @ bank_h.T  # (n, N_bank)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :GRID_NEIGHBOURS]
    fig, axes = plt.subplots(
        n,
        GRID_NEIGHBOURS + 1,
        figsize=(1.1 * (GRID_NEIGHBOURS + 1), 1.25 * n),
        dpi=100,
        squeeze=False,
    )
    for row in range(n):
        _show(axes[row, 0], queries[row])
        axes[row, 0].set_title(query_label, fontsize=7)
        for col, index in enumerate(top[row], start=1):
            ax = axes[row, col]
            _show(ax, bank[index])
            ax.set_title(f"{scores[row, index]:.3f}", fontsize=7)
            if bank_groups[index] == query_groups[row]:
                for spine in ax.spines.values():
                    spine.set_edgecolor("limegreen")
                    spine.set_linewidth(3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_embedding_map(
    h: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], path: Path, *, points: int
) -> None:
    """t-SNE of up to `points` embeddings, coloured by label."""
    from sklearn.manifold import TSNE

    pick = np.random.default_rng(0).choice(len(h), min(points, len(h)), replace=False)
    perplexity = min(30.0, (len(pick) - 1) / 3)
    xy = TSNE(n_components=2, init="pca", random_state=0, perplexity=perplexity).fit_transform(
        h[pick]
    )
    colours = [*plt.cm.tab20.colors, *plt.cm.tab20b.colors]
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=100)
    for c, name in enumerate(class_names):
        sel = labels[pick] == c
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, label=name, color=colours[c % len(colours)])
    ax.legend(markerscale=3, fontsize=6, loc="best", ncol=1 + len(class_names) // 12)
    ax.set_title(f"t-SNE of {len(pick)} held-out embeddings (colour = label)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
