#!/usr/bin/env bash
# What bench/gpu_run.sh needs carried to a GPU machine that has no network; run it here first.
#
#   bash bench/gpu_prepare.sh     # or: make gpu-prepare
#
# Writes two git-ignored folders at the repository root (a fresh clone needs neither):
#   .whl/            lightly's and pillow-heif's wheels for the device's Python 3.12 (the
#                    service's decoder imports pillow_heif), and SOURCE_COMMIT (the
#                    device's copy of the tree has no .git; the model card quotes the commit)
#   .fashion-mnist/  Fashion-MNIST's four .gz files (about 30 MB), from
#                    $LOOKALIKE_FASHION_MNIST_DIR or the Debian package dataset-fashion-mnist
# then prints their sizes. bench/gpu_run.sh --dry-run measures the whole carried tree.
#
# Only lightly itself travels: of its requirements, torch, torchvision, numpy, tqdm and
# pytorch_lightning (with lightning_utilities, which lightly.transforms imports) are on the
# device already, and hydra-core (with omegaconf and antlr4) is needed only by lightly's command
# line, never by the lightly.loss and lightly.transforms that bench/train_speed.py imports
# (checked with those modules blocked from importing, under torch 2.11 and torchvision 0.26).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIGHTLY=lightly==1.6.0  # the version `make bench-venv` pins
PILLOW_HEIF=pillow-heif==1.8.1  # service/imaging.py reads HEIC with it (pyproject: >=1.4)

rm -rf .whl && mkdir .whl
# pip matches each manylinux tag exactly; lightly is pure Python, pillow-heif has a wheel per tag.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$LIGHTLY" "$PILLOW_HEIF"
if git rev-parse HEAD >/dev/null 2>&1; then
    dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo -dirty || true)
    echo "$(git rev-parse HEAD)$dirty" > .whl/SOURCE_COMMIT
fi

source_dir=${LOOKALIKE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
rm -rf .fashion-mnist && mkdir .fashion-mnist
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
    t10k-labels-idx1-ubyte; do
    if [ ! -f "$source_dir/$name.gz" ]; then
        echo "missing $source_dir/$name.gz: apt-get install dataset-fashion-mnist," \
            "or set LOOKALIKE_FASHION_MNIST_DIR to a folder with the four .gz files" >&2
        exit 1
    fi
    cp "$source_dir/$name.gz" .fashion-mnist/
done
du -sh .whl .fashion-mnist
echo "carry both: run(command=\"bash bench/gpu_run.sh\", carry=[\".whl\", \".fashion-mnist\"])"
