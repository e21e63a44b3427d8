"""A tiny random Llama and a byte-level tokenizer, built locally in about a second (no Hub).

Tests, the CPU twin of the Smaug chain and `make reproduce` all start from this. The tokenizer has one
token per byte (so every string, digits included, tokenizes the same way everywhere) plus ChatML specials,
and a ChatML chat template, so axolotl's `chat_template: chatml` and the `chatml.*` DPO types work.
"""

from __future__ import annotations

from pathlib import Path

from smaug.common.chat import CHATML_TEMPLATE, IM_END, IM_START

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IM_START, IM_END]


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
        eos_token=IM_END,
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=[IM_START, "</s>"],
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
    from axolotl_dpop.provenance import provenance_record, write_provenance

    write_provenance(
        out_dir,
        provenance_record(
            base_model=None, license="apache-2.0", created_by=f"smaug showcase tiny-model (random init, seed {seed})"
        ),
    )
