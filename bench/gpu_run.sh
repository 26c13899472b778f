#!/usr/bin/env bash
# One prepared GPU run (issue 12): in ≤ 8 minutes on one lent H200, with no network, it
#   1. writes the environment (nvidia-smi, torch and CUDA versions, the GPU) into report.json;
#   2. runs the tests marked `cuda` (tests/test_cuda.py): NT-Xent and triplet under bf16 autocast
#      against fp32, a training step in channels_last, tiny train → export → ONNX Runtime (CPU);
#   3. runs bench/train_speed.py --device cuda: our pipeline's images/s against lightly's (its
#      DataLoader given every core) at the same backbone and batch, and a short time-to-accuracy;
#   4. trains the Fashion-MNIST recipe scaled for a GPU (RECIPE in bench/gpu_run.py, reasons in
#      training/RECIPE.md) for the time left, about 4 minutes, and says whether its kNN top-1
#      (k=200, T=0.1, the protocol of `python -m training evaluate`) beats the shipped model's.
# It also measures the tree that travelled (≤ 64 MiB) and installs the carried lightly wheel.
# Every step runs even after an earlier one failed; report.json says which ran, which were
# skipped and why, which failed and how. Exit status 1 when a step failed.
#
#   bash bench/gpu_run.sh --dry-run   # every step with tiny sizes on the CPU, ≤ 3 minutes
#   bash bench/gpu_run.sh             # the real run, on the GPU machine
#   make gpu-dry-run / make gpu-run   # the same
#
# Output: $OUT (else --out DIR, else bench/results/gpu_run/), at most 8 files of ≤ 16 MiB:
#   report.json  the environment, each step's outcome and numbers, the kNN curve, the verdict
#   log.txt      everything the steps printed
#   encoder.onnx model.json metrics.json weights.safetensors README.md knn.png
#                the trained artifact (weights without the optimiser state), its card and curve
#
# BEFORE a GPU session, on the developer machine, in the checkout that the session started in
# (the device tool sends that one, not a helper's worktree):
#   bash bench/gpu_prepare.sh   # .whl/ (lightly's wheel, the commit) and .fashion-mnist/ (30 MB)
#   bash bench/gpu_run.sh --dry-run   # proves it here, and prints the carried size (≤ 64 MiB)
#
# THEN one call of the device tool's `run` (all of it, the machine's start aside, ≤ 8 minutes):
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".fashion-mnist"], timeout_s=600)
# No pip install of the project there: its python3 has torch 2.11 (CUDA 13), torchvision,
# onnx, onnxruntime, safetensors, numpy, Pillow, scikit-learn, matplotlib and tqdm; this script
# puts the tree on PYTHONPATH and installs lightly from .whl with `pip install --target`.
#
# AFTER it, with the files that came back (files_at):
#   - BENCHMARKS.md: the GPU rows from report.json's train_speed step, with the date and GPU.
#   - If the verdict says BEATS: cp FILES_AT/weights.safetensors models/fashion-mnist/, then
#     `python -m training export --model models/fashion-mnist` rebuilds encoder.onnx,
#     model.json, metrics.json, the card and its pictures from those weights and their run
#     history (the card then says: trained on a GPU, the exact command, the wall time); check
#     metrics.json against the GPU run's, drop the stale train_log.jsonl, and commit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_run.py "$@"
