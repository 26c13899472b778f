"""lookalike training command line.

python -m training train --data fashion-mnist --loss ntxent --epochs 30 --out models/fashion-mnist
python -m training train --data ./my_images --loss triplet --image-size 64 --out models/mine
python -m training train --data ./icons --group-by name --out models/icons  # stems: positives
python -m training train --data ./photos --init models/icons --out models/mine  # fine-tune
python -m training train ... --limit 2048 --epochs 1      # smoke run on a subset
python -m training evaluate --model models/mine                  # again, on its own data
python -m training evaluate --model models/mine --data ./photos --out eval/mine
python -m training evaluate --model models/icons --cross-style ./style_a ./style_b  # same stems
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from training.train import TrainConfig, command_line, override

# CLI flag → (TrainConfig key, help). Defaults come from TrainConfig, never from here.
TRAIN_FLAGS = {
    "--data": (
        "data",
        "'fashion-mnist' or a folder of images (any format the service accepts, searched "
        "recursively); about 5%% of it is held out to measure the model",
    ),
    "--loss": ("loss", "'ntxent' (SimCLR; try this first) or 'triplet' (with in-batch mining)"),
    "--group-by": (
        "group_by",
        "images that show one thing are positives of each other too (NT-Xent only): 'name' "
        "groups files with the same name (stem) in different subfolders; or a CSV of "
        "path,group rows, paths relative to --data",
    ),
    "--init": (
        "init",
        "start from this model's weights (models/NAME), a new run: its architecture, image "
        "size and colour mode unless you set them; the card compares the two",
    ),
    "--epochs": ("epochs", "passes over the data; 30 on Fashion-MNIST, 1 for a smoke run"),
    "--batch-size": ("batch_size", "global batch; 256 on a CPU, 512–1024 on a GPU"),
    "--lr": ("lr", "AdamW peak learning rate; 2e-3 at batch 256, scale with the batch"),
    "--temperature": ("temperature", "NT-Xent τ; 0.2 (try 0.1–0.5)"),
    "--margin": ("margin", "triplet α on squared distances of unit vectors; 0.2 (try 0.1–0.5)"),
    "--mining": (
        "mining",
        "triplet negatives: 'semi_hard' (stable) or 'batch_hard' "
        "(hardest; collapse is detected and falls back to semi-hard)",
    ),
    "--image-size": (
        "image_size",
        "side in pixels for a folder (64; 32 trains about 4× faster and finds fewer copies)",
    ),
    "--limit": ("limit", "use only the first N training (and held-out) images"),
    "--label-depth": (
        "label_depth",
        "folder levels that name an image's label, used only to report kNN beside copy "
        "detection (1: the top-level subfolder; 0: ignore folders)",
    ),
    "--device": ("device", "'auto' (CUDA when present, with bf16 autocast), 'cuda' or 'cpu'"),
    "--seed": ("seed", "random seed for init, shuffling and augmentation"),
    "--out": ("out", "artifact folder, e.g. models/mine"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = TrainConfig()
    train = commands.add_parser("train", help="train an encoder and write its artifact")
    for flag, (key, text) in TRAIN_FLAGS.items():
        train.add_argument(
            flag, dest=key, metavar=key.upper(), help=f"{text} (default: {getattr(defaults, key)})"
        )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT/weights.safetensors from its next epoch "
        "(raise --epochs to train longer)",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other TrainConfig field, e.g. --set widths=[32,64,128] "
        "--set crop_min_scale=0.3 (see training/train.py)",
    )
    export = commands.add_parser("export", help="re-export an artifact from its weights")
    export.add_argument("--model", required=True, type=Path, help="artifact folder")
    evaluate = commands.add_parser(
        "evaluate",
        help="measure an artifact on held-out images: copy detection (and kNN when labelled)",
    )
    evaluate.add_argument("--model", required=True, type=Path, help="artifact folder")
    evaluate.add_argument(
        "--data",
        default=None,
        help="a folder of images, split as training splits it (default: the model's own data)",
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for metrics.json and the pictures (default: the model's folder when "
        "evaluating on its own data; otherwise nothing is written)",
    )
    evaluate.add_argument("--limit", type=int, default=None, help="use N training images")
    evaluate.add_argument("--label-depth", type=int, default=None, help="as for train")
    evaluate.add_argument(
        "--cross-style",
        nargs=2,
        metavar=("FOLDER_A", "FOLDER_B"),
        default=None,
        help="also cross-style retrieval: two folders drawing the same things in two styles, "
        "one file name (stem) per thing; R@1 and R@10 from each to the other",
    )
    return parser


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    """Defaults, then with --init the parent's architecture and input, then every flag and
    --set on top: what the user sets explicitly wins (and is refused if the weights don't fit)."""
    settings = [(key, getattr(args, key)) for key, _ in TRAIN_FLAGS.values()]
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        settings.append((key.strip(), value.strip()))
    settings = [(key, value) for key, value in settings if value is not None]
    cfg = TrainConfig(command=command_line(argv), resume=args.resume)
    init = dict(settings).get("init")
    if init:
        from training.parent import Parent

        cfg = dataclasses.replace(cfg, **Parent.open(init).settings())
    for key, value in settings:
        cfg = override(cfg, key, value)
    return cfg


def evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_artifact, format_table, headline, write_evaluation

    evaluation = evaluate_artifact(
        args.model,
        data=args.data,
        limit=args.limit,
        label_depth=args.label_depth,
        cross_style=args.cross_style,
    )
    print(format_table(evaluation.result))
    print(f"{headline(evaluation.result)}.")
    out = args.out or (args.model if args.data is None else None)
    if out is None:
        print("(add --out DIR to keep metrics.json and the neighbour grid)")
    else:
        write_evaluation(evaluation, out)
        if out == args.model:
            from training.card import refresh_card

            refresh_card(out, evaluation.result)
        print(f"wrote {out / 'metrics.json'} and {out / 'neighbours.png'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("onnxscript", "onnx_ir", "torch.onnx", "matplotlib"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from training.train import train

            train(config_from_args(args, argv))
        elif args.command == "export":
            from training.train import export_existing

            export_existing(args.model)
        else:
            evaluate(args)
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
