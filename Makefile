# Thin by design: each target is one line calling axolotl or the `smaug` CLI. Hyperparameters live in
# recipes/*.yml only. The venv's bin/ goes first on PATH because `axolotl train` starts `accelerate` from PATH.
VENV ?= .venv
export PATH := $(abspath $(VENV))/bin:$(PATH)
export AXOLOTL_DO_NOT_TRACK := 1
PYTEST_ARGS ?=

.PHONY: setup test test-fast bench-loss

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt scripts/setup_venv.sh
	VENV=$(VENV) bash scripts/setup_venv.sh

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 pytest -m "not slow" $(PYTEST_ARGS)

bench-loss: setup
	python benchmarks/bench_dpop_vs_dpo.py
