# lookalike: `make run` serves the shipped model, `make test` runs everything CI runs, and
# `make run-icons` serves the colour model (models/icons) over the oxygen icons.
# Each sets up a virtualenv in .venv first (and Debian packages when run as root).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# `make run` needs only the demo gallery's images; the tests add a browser, wrk, nginx and
# rsvg-convert (tests/test_icons_corpus.py).
RUN_APT_PACKAGES := dataset-fashion-mnist
APT_PACKAGES := $(RUN_APT_PACKAGES) chromium chromium-driver wrk nginx librsvg2-bin
BENCH_VENV ?= .venv-bench
# bench/icons_corpus.py: icon themes (gnome and faba come as dependencies), clip art, rsvg-convert
ICON_PACKAGES := librsvg2-bin openclipart-png adwaita-icon-theme breeze-icon-theme \
	elementary-icon-theme faenza-icon-theme gnome-icon-theme faba-icon-theme moka-icon-theme \
	numix-icon-theme oxygen-icon-theme paper-icon-theme papirus-icon-theme suru-icon-theme \
	tango-icon-theme
ICONS_OUT ?= data/icons

.PHONY: setup apt apt-run run run-icons test test-fast lint train bench-venv gpu-prepare gpu-dry-run gpu-run icons-corpus clean

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. An unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The Python client is its own distribution (client/); `python -m service import` uses it.
	$(PY) -m pip install -q -e ".[train,serve,dev]" -e ./client
	touch $@

# Serving alone: no torch, no test tools (`make test` adds them to the same venv).
$(VENV)/.serve-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[serve]"
	touch $@

define apt_install
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
		fi; \
	else echo "not root or no apt-get: install $(1) yourself"; fi
endef

apt:
	$(call apt_install,$(APT_PACKAGES))

apt-run:
	$(call apt_install,$(RUN_APT_PACKAGES))

setup: apt $(VENV)/.installed

run: apt-run $(VENV)/.serve-installed
	$(PY) -m service --host $(HOST) --port $(PORT) --seed-demo-gallery

# The colour model over Debian's oxygen icons, a style it never saw in training. Its own data dir:
# a gallery holds one model's vectors (another model would re-embed it on start).
ICONS_DATA_DIR ?= data/icons-demo
run-icons: $(VENV)/.serve-installed
	$(call apt_install,oxygen-icon-theme)
	LOOKALIKE_MODEL_DIR=models/icons LOOKALIKE_DATA_DIR=$(ICONS_DATA_DIR) \
		$(PY) -m service --host $(HOST) --port $(PORT) --seed-demo-gallery icons

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service
	$(VENV)/bin/mypy --config-file client/pyproject.toml client/lookalike

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

train: setup
	$(PY) -m training train --data fashion-mnist --loss ntxent --epochs 40 \
		--set 'widths=[48,96,192]' --out models/fashion-mnist

# bench/train_speed.py runs lightly beside our pipeline on one torch: lightly needs torchvision,
# which imports only beside its own torch build, so both pipelines get this separate venv.
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 lightly==1.6.0
	$(BENCH_VENV)/bin/pip install -q --no-deps -e .
	$(BENCH_VENV)/bin/pip install -q numpy pillow pillow-heif safetensors tqdm
	touch $@

bench-venv: apt $(BENCH_VENV)/.installed

# One prepared run on a lent GPU machine (bench/gpu_run.sh says how to call it there).
# gpu-prepare fills the carried folders .whl and .fashion-mnist; gpu-dry-run proves the run here.
gpu-prepare: setup
	PYTHON=$(PY) bash bench/gpu_prepare.sh

gpu-dry-run: setup
	PYTHON=$(PY) bash bench/gpu_run.sh --dry-run

# On the GPU machine itself: its python3 holds torch; nothing is installed.
gpu-run:
	bash bench/gpu_run.sh

# A colour corpus of one icon name drawn in many styles (bench/icons_corpus.py says what it writes).
# ICONS_ARGS passes options through, e.g. ICONS_ARGS="--themes papirus,oxygen --clipart 0".
icons-corpus: setup
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(ICON_PACKAGES)"
	$(PY) bench/icons_corpus.py --out $(ICONS_OUT) $(ICONS_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache .mypy_cache
