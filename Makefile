# make reproduce: set up .venv, get data/ (dvc pull, else regenerate and verify), run the pipeline.
# make test:      set up .venv, run the whole test suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: venv data reproduce test lint bench clean-reports

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# data/ must hash to what data.dvc records: from the DVC remote when reachable, else regenerated.
data: venv
	@if [ -d data ] && medvlp verify-data data data.dvc >/dev/null 2>&1; then \
	    echo "data/ matches data.dvc"; \
	elif dvc pull -q data.dvc 2>/dev/null; then \
	    echo "data/ pulled from the DVC remote"; \
	else \
	    echo "no DVC remote has data/: regenerating the synthetic corpus"; \
	    rm -rf data && medvlp synth data --quiet >/dev/null && medvlp verify-data data data.dvc && \
	    dvc commit -q -f data.dvc; \
	fi

reproduce: data
	dvc repro

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check lib tests bench

# benchmarks: each prints ratios against a named baseline (results: bench/RESULTS.md); the last two need `dvc repro curate`
# by hand: bench/compute_scaling.py (over an hour on 2 cores with its defaults; needs curate) and bench/gpu_checks.sh (a CUDA GPU)
bench: venv
	$(BIN)/python bench/losses.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/volume_tower.py
	$(BIN)/python bench/image_tower.py
	$(BIN)/python bench/recipe_memory.py

# mutation check: one-line bugs planted in the evaluation / training glue must each fail a test (bench/mutants.py)
.PHONY: mutants
mutants: venv
	$(BIN)/python bench/mutants.py
