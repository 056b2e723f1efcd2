# make reproduce: set up .venv, get data/ (dvc pull, else regenerate the synthetic corpus and verify), run the pipeline.
# make test:      set up .venv, run the whole test suite.
# make plots:     dvc plots show to offline HTML (dvc_plots/index.html), checked in headless Chromium.
# make lab:       JupyterLab on notebooks/ with the .venv kernel (README: "Exploring one stage by hand").
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)

.PHONY: venv data reproduce test lint lab bench clean-reports plots

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# data/ must hash to what data.dvc records: from the DVC remote (a failed pull names the remote and DVC's error),
# else regenerated, but only when data.dvc records the synthetic corpus; data/ is never deleted (medvlp.data.fetch).
data: venv
	@medvlp get-data data data.dvc

reproduce: data
	dvc repro

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check lib tests bench

# every plot dvc.yaml declares, rendered by `dvc plots show` with vega inlined (no CDN), must draw in headless
# Chromium (apt-get install chromium chromium-driver); PLOTS_DIFF="HEAD" compares revisions instead (dvc plots diff)
PLOTS_DIFF ?=
plots: venv
	$(BIN)/medvlp plots --out dvc_plots --screenshot reports/figures/dvc_plots.png \
	    $(if $(strip $(PLOTS_DIFF)),--diff $(PLOTS_DIFF))

# A stage notebook run by hand ("Run All") reads its params.yaml section and writes under scratch/<notebook>/ only
# (medvlp.notebooks.notebook_parameters). The kernel `python3` is this .venv's Python (a kernel spec in .venv that
# JUPYTER_PATH puts before any user-wide one); notebooks/*.ipynb are saved without outputs (strip_on_save), so
# saving one changes no DVC dependency.
LAB_PORT ?= 8888
lab: venv
	@$(BIN)/python -m ipykernel install --prefix $(abspath $(VENV)) --name python3 \
	    --display-name "Python 3 (medvlp .venv)" >/dev/null
	JUPYTER_PATH=$(abspath $(VENV))/share/jupyter $(BIN)/jupyter lab --port=$(LAB_PORT) \
	    --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks \
	    --ContentsManager.pre_save_hook=medvlp.notebooks.strip_on_save $(if $(filter 0,$(shell id -u)),--allow-root)

# benchmarks: each prints ratios against a named baseline (results: bench/RESULTS.md); the last two need `dvc repro curate`
# by hand: bench/compute_scaling.py (over an hour on 2 cores with its defaults; needs curate) and bench/gpu_checks.sh (a CUDA GPU)
bench: venv
	$(BIN)/python bench/losses.py
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/volume_tower.py
	$(BIN)/python bench/image_tower.py
	$(BIN)/python bench/size_memory.py

# mutation check: one-line bugs planted in the evaluation / training glue must each fail a test (bench/mutants.py)
.PHONY: mutants
mutants: venv
	$(BIN)/python bench/mutants.py
