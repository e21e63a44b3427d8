"""A tiny random Llama and a byte-level tokenizer, built locally in about a second (no Hub).

Tests, the CPU twin of the Smaug chain and `make reproduce` all start from this. The tokenizer has one
token per byte (so every string, digits included, tokenizes the same way everywhere) plus ChatML specials,
and a ChatML chat template, so axolotl's `chat_template: chatml` and the `chatml.*` DPO types work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer():
    """A byte-level tokenizer with no merges: vocab = specials + the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_symbols = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(byte_symbols))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "</s>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llama(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised LlamaForCausalLM + tokenizer to ``out_dir`` (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _write_provenance(out_dir, seed)
    return out_dir


def _write_provenance(out_dir: Path, seed: int) -> None:
    """Created from scratch here, so the lineage ends with our own licence (see model_cards/)."""
    from datetime import datetime, timezone

    from axolotl_dpop.provenance import PROVENANCE_FILE, SCHEMA_VERSION, package_versions, write_json_atomic

    write_json_atomic(out_dir / PROVENANCE_FILE, {
        "schema": SCHEMA_VERSION, "recipe": None, "base_model": None, "base_model_revision": None,
        "parent": None, "license": "apache-2.0",
        "training": None, "datasets": [], "created_by": f"smaug tiny-model (random init, seed {seed})",
        "hardware": None, "versions": package_versions(),
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })


def register(subparsers) -> None:
    parser = subparsers.add_parser("tiny-model", help="write a tiny random Llama + byte tokenizer (for CPU runs)")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    path = build_tiny_llama(args.out_dir, hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed)
    print(f"wrote tiny Llama to {path}")
    return 0
