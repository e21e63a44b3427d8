"""A tiny random Llama and a byte-level tokenizer, built locally in about a second (no Hub): one token per byte,
so every string (digits included) tokenizes the same way everywhere, plus the ChatML specials and template that
axolotl's `chat_template: chatml` and `chatml.*` DPO types need."""

from __future__ import annotations

from pathlib import Path

from smaug.common.chat import CHATML_TEMPLATE, IM_END, IM_START

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IM_START, IM_END]
_SPECIALS = dict(
    bos_token="<s>", eos_token=IM_END, pad_token="<pad>", unk_token=None, additional_special_tokens=[IM_START, "</s>"]
)


def build_tokenizer():
    """A byte-level tokenizer with no merges: vocab = specials + the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **_SPECIALS)
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

    from axolotl_dpop.provenance import provenance_record, write_provenance

    out_dir, tokenizer = Path(out_dir), build_tokenizer()
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
    out_dir.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # Created from scratch here, so the lineage ends with our own licence (model_cards/).
    created_by = f"smaug showcase tiny-model (random init, seed {seed})"
    write_provenance(out_dir, provenance_record(base_model=None, license="apache-2.0", created_by=created_by))
    return out_dir
