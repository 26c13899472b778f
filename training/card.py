"""The artifact's README.md model card: its contract, how it was trained, its metrics and its
pictures (training/pictures.py draws them)."""

from __future__ import annotations

import json
from pathlib import Path

from training.checkpoint import WEIGHTS_FILE, read_meta
from training.evaluate import (
    CROSS_STYLE_GRID,
    EMBEDDING_MAP,
    NEIGHBOUR_GRID,
    format_table,
    headline,
)
from training.groups import describe
from training.pictures import plot_history

RECIPE_NOTES = Path(__file__).with_name("RECIPE.md")
# Shipped model → the heading of its section of RECIPE.md (None: the whole file).
RECIPE_SECTIONS = {"fashion-mnist": None, "icons": "## The colour model"}


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


def graph_precision(precision: dict) -> str:
    """How encoder.onnx computes, and how close its int8 copy came (training/quantize.py)."""
    fidelity = precision.get("int8_fidelity")
    if fidelity is None:
        return "Graph: float32."
    closeness = (
        f"cosine to the float32 graph {fidelity['mean_cosine']} on average, at least "
        f"{fidelity['p1_cosine']} for 99 % of {fidelity['images']} held-out images"
    )
    if precision["graph"] == "int8":
        return f"Graph: int8 (static quantization, calibrated on training images): {closeness}."
    return f"Graph: float32; an int8 copy was not close enough ({closeness})."


def write_card(out: Path, info: dict, history: list[dict], metrics: dict) -> None:
    """README.md for the artifact in `out`, beside metrics.json and its pictures."""
    r1 = metrics["metrics"]["copy_r1"]
    floors = {"raw pixels": r1["raw_pixels"], "random init": r1["random_init"]}
    if "parent" in r1:
        floors["parent"] = r1["parent"]
    curves = (
        ("loss", f"{info['loss']['name']} loss", "loss.png", None),
        ("copy_r1", "copy detection R@1 (monitor)", "copy_r1.png", floors),
        ("knn_top1_k200_t0.1", "kNN top-1 (k=200, T=0.1)", "knn.png", None),
    )
    pictures = [
        f"![{key}]({name})"
        for key, label, name, lines in curves
        if plot_history(history, key, label, out / name, lines)
    ]
    pictures += [
        f"![{name[:-4]}]({name})"
        for name in (NEIGHBOUR_GRID, CROSS_STYLE_GRID, EMBEDDING_MAP)
        if (out / name).exists()
    ]
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
        f"- {graph_precision(info.get('precision', {}))}",
        "",
        "## Training",
        "",
        "- Commands (a resumed run lists each):",
        *[f"  - `{command}`" for command in training["commands"]],
        f"- Data: {training['data']['source']}, {training['data']['images']} images "
        "(labels unused by the loss)",
        *lineage(info),
        f"- Loss: {info['loss']}",
        f"- Encoder: widths {list(arch['widths'])}, depths {list(arch['depths'])}, "
        f"`h` = last map pooled to {arch['pool_grid']}×{arch['pool_grid']} cells",
        f"- {trained_on(training)}",
        f"- Epochs: {training['epochs']} ({training['steps']} steps){fitted}; wall time "
        f"{training['wall_time_s'] / 60:.1f} min (training and the per-epoch monitor; export and "
        "evaluation not counted)",
        f"- Git commit: `{training['git_commit']}`",
        "",
        "## Metrics",
        "",
    ]
    lines += [
        f"**{headline(metrics)}.** Neighbours of eight of them: "
        f"[{NEIGHBOUR_GRID}]({NEIGHBOUR_GRID}).",
        "",
        *cross_style_lines(metrics),
        f"- Held out, never trained on: {metrics['heldout']}.",
        f"- Edits: {metrics['edits']}.",
        "- Floors, measured the same way: raw pixels (cosine of the flattened pixels) and a "
        "random-init encoder of this architecture (seed 0, whitening fitted like this one's).",
        *(
            [
                f"- Parent: `{metrics['parent']['name']}`, the model this one was fine-tuned "
                "from, as it is (its own graph and whitening), measured the same way."
            ]
            if metrics.get("parent")
            else []
        ),
        "",
        "```",
        format_table(metrics),
        "```",
        "",
        *[f"- `{name}`: {row['protocol']}" for name, row in metrics["metrics"].items()],
    ]
    lines += ["", "## Pictures", "", *pictures, ""]
    lines += recipe_notes(info["name"])
    (out / "README.md").write_text("\n".join(lines))


def recipe_notes(name: str) -> list[str]:
    """A shipped model's card carries its recipe notes (RECIPE_SECTIONS)."""
    if not RECIPE_NOTES.exists() or name not in RECIPE_SECTIONS:
        return []
    notes, heading = RECIPE_NOTES.read_text(), RECIPE_SECTIONS[name]
    if heading:
        start = notes.find(heading)
        if start < 0:
            return []
        end = notes.find("\n## ", start + 1)
        notes = notes[start : end if end > 0 else None]
    return [notes.strip(), ""]


def cross_style_lines(metrics: dict) -> list[str]:
    """The card's line on cross-style retrieval, when `evaluate --cross-style` measured it."""
    rows = metrics["metrics"]
    if "cross_style_r1" not in rows:
        return []
    r1, r10 = rows["cross_style_r1"], rows["cross_style_r10"]
    floors = [name for name in ("parent", "raw_pixels", "random_init") if name in r1]
    against = ", ".join(
        f"{name.replace('_', ' ')} {r1[name]:.1%} / {r10[name]:.1%}" for name in floors
    )
    return [
        f"**Cross-style retrieval R@1 {r1['model']:.1%}, R@10 {r10['model']:.1%}** ({against}): "
        f"{metrics['cross_style']}; each drawing looks for its namesake among "
        "every drawing of the other style.",
        "",
    ]


def lineage(info: dict) -> list[str]:
    """The card's lines on where the weights started and which images were grouped."""
    lines = []
    parent = info.get("parent")
    if parent:
        lines.append(
            f"- Fine-tuned from `{parent['name']}` (version `{parent['version'][:12]}`, at "
            f"`{parent['path']}` then; trained on {parent['data']}): `--init` started from its "
            "encoder and projection head, with a new optimiser and schedule"
        )
    grouping = info["training"].get("grouping")
    if grouping:
        lines.append(f"- Grouped positives: {describe(grouping)}")
    return lines


def refresh_card(model_dir: Path, metrics: dict) -> None:
    """Rewrite an artifact's card after `python -m training evaluate` re-measured it."""
    info = json.loads((model_dir / "model.json").read_text())
    weights = model_dir / WEIGHTS_FILE
    history = read_meta(weights)["history"] if weights.exists() else []
    write_card(model_dir, info, history, metrics)
