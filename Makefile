# cryo-orient: every figure and table of Banjac, Donati & Defferrard (2021), rebuilt from code.
#
#   make reproduce [PROFILE=tiny|cpu|paper]   all figures and tables of a profile (default cpu)
#   make figure-6 / make table-1              one of them
#   make test                                 unit tests + the tiny profile end to end
#
# Every target depends on the virtual environment, so any of them works as the first command.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

PROFILE ?= cpu
LOCK ?= cpu
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(LOCK)
BUILD := build/$(PROFILE)
FIG_DIR := figures/$(PROFILE)
SIM_DIR := data/simulated/$(PROFILE)
PKG_SRC := $(shell find lib/cryo_orient -name "*.py") pyproject.toml

export MPLBACKEND := Agg
export PYTHONHASHSEED := 0
# TensorFlow: warnings and errors only (no oneDNN/XLA/CUDA-probe info lines in the logs).
export TF_CPP_MIN_LOG_LEVEL := 2
# Offline machines: a folder holding the registered input files (see data/README.md).
export DATA_MIRROR

IMPLEMENTED := figure-1 figure-2 figure-3 figure-4 figure-5 figure-6 figure-7 figure-8 figure-9 figure-10 figure-11 figure-12 figure-13 \
               figure-14 figure-15 figure-16 figure-17 figure-18 table-1 coverage

# Read the profile only for goals that need it: write build/<profile>/params/*.json (rewritten
# only when their content changes) and build/<profile>/profile.mk (targets and dependencies).
PROFILE_GOALS := $(filter-out help install lock clean clean-all lint test test-unit smoke bench foreign-stack,$(or $(MAKECMDGOALS),help))
ifneq ($(PROFILE_GOALS),)
  $(shell $(PYTHON) lib/cryo_orient/workflow/profiles.py sync $(PROFILE) >&2)
  ifneq ($(.SHELLSTATUS),0)
    $(error profile '$(PROFILE)' could not be read (message above); profiles live in experiments/profiles/)
  endif
  include $(BUILD)/profile.mk
endif

.PHONY: help install lock reproduce report simulate test test-unit smoke lint bench compare foreign foreign-stack refinement generalization \
        clean clean-all \
        $(IMPLEMENTED)

help: ## List the targets
	@echo "Usage: make TARGET [PROFILE=tiny|cpu|paper] (default PROFILE=cpu)"
	@grep -hE '^[a-zA-Z0-9_.-]+:.*## ' $(MAKEFILE_LIST) | sort -V | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: $(STAMP) ## Create .venv (Python 3.11) from the pinned lock file (LOCK=cpu|gpu)

$(STAMP): requirements/$(LOCK).lock requirements/nodeps.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/$(LOCK).lock
	@# tensorflow-graphics declares tensorflow-addons (dead under Keras 3); its geometry needs only TF.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	rm -f $(VENV)/.installed-*
	touch $@

lock: ## Re-pin requirements/{cpu,gpu}.lock from requirements/*.in (needs uv)
	cd requirements && for l in cpu gpu; do \
	  uv pip compile $$l.in -o $$l.lock --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header -q; done

PROFILE_NOTEBOOKS = $(addprefix $(BUILD)/notebooks/,$(addsuffix .ipynb,$(PROFILE_TARGETS)))
REPORT := $(FIG_DIR)/REPORT.md

reproduce: $(PROFILE_NOTEBOOKS) $(REPORT) ## Every figure and table of PROFILE, and the report, into figures/PROFILE/
	@echo "figures/$(PROFILE)/ is up to date: $(PROFILE_TARGETS) and REPORT.md"

report: $(REPORT) ## figures/PROFILE/REPORT.md and .html: our numbers beside the paper's, verdicts, run times

# The report reads every record of the profile (and the optional comparison's, once built) and the
# one file that holds the paper's values.
$(REPORT): $(PROFILE_NOTEBOOKS) experiments/paper-reference.toml $(wildcard $(FIG_DIR)/compare.json) $(PKG_SRC) | $(STAMP)
	$(BIN)/cryo-orient report --profile $(PROFILE)

simulate: $(PROFILE_DATASETS) ## Simulate the datasets of PROFILE into data/simulated/PROFILE/

$(IMPLEMENTED): %: $(BUILD)/notebooks/%.ipynb
	@echo "$* -> $(FIG_DIR)/"

figure-1: ## Imaging geometry, drawn from the projection convention (volume, ray, detector, angles)
figure-2: ## Intuition: projections, their orientation distances, and orientations recovered from them
figure-3: ## Method overview: distance estimation, then orientation recovery (real thumbnails)
figure-4: ## Distance learning: the Siamese network and its loss, drawn from the model
figure-5: ## Density maps used, rendered (orthogonal projections and isosurfaces)
figure-6: ## Example 5j0n projections: clean, noisy, shifted, shifted + noisy
figure-7: ## Orientation recovery from perturbed distances: E_OR and L_OR against sigma
figure-8: ## Distance learning: L_DE per epoch, estimated against true distance on test pairs
figure-9: ## Sensitivity of distance learning to noise and shifts, with recovery errors
figure-10: ## The whole pipeline: L_OR over steps and E_OR histograms from estimated distances
figure-11: ## Reconstructions (true, random, recovered, no-ground-truth orientations) and FSC curves
figure-12: ## The four orientation samplings (sphere, d_q, Euler and quaternion histograms)
figure-13: ## The whole pipeline on non-uniform (uniform Euler) orientations
figure-14: ## Orientation recovery from exact distances: L_OR over steps
figure-15: ## Recovered orientations before and after alignment
figure-16: ## Euclidean distance between raw projections against d_q (the baseline)
figure-17: ## Design choices: cosine vs Euclidean feature distance, feature-vector length
figure-18: ## The CNN architecture, drawn from the model (layer shapes, parameters)
table-1: ## Train/validation/test split and pair counts
coverage: ## Beyond the paper: the two heads x the two recoveries on full, half and quarter coverage

# Figure 15 shows the orientations that Figure 14 recovered.
$(BUILD)/notebooks/figure-15.ipynb: $(BUILD)/notebooks/figure-14.ipynb
# Figure 11 reads the pipeline cases that figure 10 computes (cached), so run them in turn.
$(BUILD)/notebooks/figure-11.ipynb: $(BUILD)/notebooks/figure-10.ipynb

$(SIM_DIR)/%.h5: $(BUILD)/params/dataset-%.json | $(STAMP)
	$(BIN)/cryo-orient simulate --config $< --out $@

$(BUILD)/notebooks/%.ipynb: experiments/%.py $(BUILD)/params/%.json $(PKG_SRC) | $(STAMP)
	@mkdir -p $(@D) $(FIG_DIR)
	$(BIN)/jupytext --quiet --to ipynb --set-kernel python3 --output $(@D)/$*.source.ipynb $<
	$(BIN)/papermill --log-level WARNING -k python3 --cwd . -f $(BUILD)/params/$*.json $(@D)/$*.source.ipynb $@

test: test-unit smoke ## Unit tests, then every implemented experiment on the tiny profile

test-unit: $(STAMP) ## Unit tests only (pytest; gpu tests skip without a GPU)
	$(BIN)/python -m pytest

smoke: $(STAMP) ## The tiny profile end to end, and a check that every output exists
	$(MAKE) reproduce PROFILE=tiny
	$(BIN)/python -m cryo_orient.cli check-outputs --profile tiny

LINTED := lib tests benchmarks experiments

lint: $(STAMP) ## ruff (lint and format check) on the code and notebooks; hadolint on the Dockerfile
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/hadolint Dockerfile

bench: $(STAMP) ## Speed: projection (NUFFT vs reference, ASTRA on GPU), recovery, alignment, reconstruction, distance learning, on-the-fly input, refinement
	$(BIN)/python benchmarks/projection.py
	$(BIN)/python benchmarks/reconstruction.py
	$(BIN)/python benchmarks/recovery.py
	$(BIN)/python benchmarks/alignment.py
	$(BIN)/python benchmarks/siamese.py
	$(BIN)/python benchmarks/onthefly.py
	$(BIN)/python benchmarks/refine_speed.py

# Optional: our pipeline against common lines (ASPIRE-Python's synchronization voting) on the same
# projections. ASPIRE lives in its own venv, never in the default install; the notebook runs in the
# main one and calls experiments/compare/aspire_orientations.py with $(COMPARE_VENV)/bin/python.
COMPARE_VENV := .venv-compare

$(COMPARE_VENV)/.installed: requirements/compare.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(COMPARE_VENV)
	$(COMPARE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(COMPARE_VENV)/bin/python -m pip install --quiet -r requirements/compare.lock
	touch $@

compare: $(BUILD)/notebooks/compare.ipynb ## Optional: vs common lines (ASPIRE sync voting), E_OR vs SNR, time, FSC (own venv)
	@# The report shows the comparison: refresh it from the records already there.
	$(BIN)/cryo-orient report --profile $(PROFILE)
	@echo "compare -> $(FIG_DIR)/compare.png, compare.md, REPORT.md"

$(BUILD)/notebooks/compare.ipynb: $(COMPARE_VENV)/.installed experiments/compare/aspire_orientations.py \
                                  experiments/compare/aspire_convention.py experiments/compare/aspire_runner.py

# Optional, beyond the paper: `cryo-orient orient` on a particle stack another program wrote (the
# ASPIRE 70S stack of the data mirror by default; `make foreign-stack` writes one of the same kind
# with RELION's own projector into data/foreign/ for machines without the mirror).
foreign: $(BUILD)/notebooks/foreign.ipynb ## Optional: orient on a RELION-format stack with CTF (errors, FSC, sections, time)
	$(BIN)/cryo-orient report --profile $(PROFILE)
	@echo "foreign -> $(FIG_DIR)/foreign.png, foreign.json, REPORT.md"

# Optional, beyond the paper: our refinement beside RELION 3.1's auto-refine (needs RELION:
# apt-get install relion openmpi-bin) on the same stack, start and reference.
refinement: $(BUILD)/notebooks/refinement.ipynb ## Optional: our refinement vs RELION auto-refine (errors, FSC, resolution, time)
	$(BIN)/cryo-orient report --profile $(PROFILE)
	@echo "refinement -> $(FIG_DIR)/refinement.png, refinement.json, REPORT.md"

# Optional, beyond the paper: leave-one-out over the proteins, a general estimator trained on the
# other maps (on the fly) against the estimator trained on the protein itself.
generalization: $(BUILD)/notebooks/generalization.ipynb ## Optional: estimators for proteins never seen in training (leave-one-out E_OR)
	$(BIN)/cryo-orient report --profile $(PROFILE)
	@echo "generalization -> $(FIG_DIR)/generalization.png, generalization.csv, REPORT.md"

foreign-stack: $(STAMP) ## Write a 70S stack like the mirror's ASPIRE one with relion_project into data/foreign/
	$(BIN)/python experiments/foreign/make_stack.py --out data/foreign/aspire-70s-ctf

clean: ## Remove build/ and the tiny profile's outputs (keeps downloads and venv)
	rm -rf build figures/tiny data/simulated/tiny

clean-all: clean ## Also remove the venvs (.venv, .venv-compare), simulated data and downloads
	rm -rf $(VENV) $(COMPARE_VENV) data/simulated data/*.mrc data/*.gz data/*.star data/*.sha256
