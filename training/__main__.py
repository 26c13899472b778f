"""lookalike training command line.

python -m training train --data fashion-mnist --loss ntxent --epochs 30 --out models/fashion-mnist
python -m training train --data ./my_images --loss triplet --image-size 64 --out models/mine
python -m training train ... --limit 2048 --epochs 1      # smoke run on a subset
python -m training evaluate --model models/fashion-mnist
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.train import TrainConfig, command_line, override

# CLI flag → (TrainConfig key, help). Defaults come from TrainConfig, never from here.
TRAIN_FLAGS = {
    "--data": (
        "data",
        "'fashion-mnist' or a folder of images (any format Pillow reads, "
        "searched recursively; subfolder names become evaluation labels)",
    ),
    "--loss": ("loss", "'ntxent' (SimCLR; try this first) or 'triplet' (with in-batch mining)"),
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
    "--image-size": ("image_size", "side in pixels for a folder (64–96 for colour photos)"),
    "--limit": ("limit", "use only the first N training images"),
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
    evaluate = commands.add_parser("evaluate", help="print and write the artifact's metrics")
    evaluate.add_argument("--model", required=True, type=Path, help="artifact folder")
    evaluate.add_argument("--limit", type=int, default=None, help="use N train images as the bank")
    return parser


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TrainConfig:
    cfg = TrainConfig(command=command_line(argv), resume=args.resume)
    for key, _ in TRAIN_FLAGS.values():
        value = getattr(args, key)
        if value is not None:
            cfg = override(cfg, key, value)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        cfg = override(cfg, key.strip(), value.strip())
    return cfg


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
            from training.evaluate import evaluate_artifact, format_table

            print(format_table(evaluate_artifact(args.model, limit=args.limit)))
    except (ValueError, FileNotFoundError, FloatingPointError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
