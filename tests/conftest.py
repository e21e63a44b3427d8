"""Shared fixtures. Everything runs offline on CPU; models are built here, never downloaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Before anything imports huggingface_hub / datasets / axolotl.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama (~115k parameters) with a byte-level ChatML tokenizer. Treat as read-only;
    copy it (``tiny_model_copy``) if a test writes into the folder."""
    from smaug.training.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def bos_tokenizer():
    """The tiny byte-level tokenizer made to behave like Llama-2's and Mistral's: tokenizing text prepends the
    BOS token <s> (their add_bos_token), and EOS is </s>."""
    from tokenizers import processors

    from smaug.training.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.eos_token = "</s>"
    bos = tokenizer.convert_tokens_to_ids("<s>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    assert tokenizer("x")["input_ids"][0] == bos
    return tokenizer
