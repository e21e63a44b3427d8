"""A back-of-the-envelope GPU memory estimate per device for one training stage (for `--dry-run`).

Rough by design: it should tell "fits on 8x80 GB" from "needs offload" before anyone pays for GPUs, and it
states its assumptions so a reader can redo the sum. Not a profiler: allocator fragmentation, NCCL buffers
and DeepSpeed's bucket sizes come on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smaug.training.recipes import is_preference

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    params: float  # total parameter count
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    source: str  # where the numbers come from

    @property
    def billions(self) -> float:
        return self.params / 1e9


# Published architecture numbers (config.json of each model); parameter counts computed from them.
KNOWN_MODELS: dict[str, ModelShape] = {
    "jondurbin/bagel-34b-v0.2": ModelShape(34.39e9, 7168, 60, 64000, 20480, "table: Yi-34B architecture"),
    "moreh/MoMo-72B-lora-1.8.7-DPO": ModelShape(72.29e9, 8192, 80, 152064, 24576, "table: Qwen-72B architecture"),
    "meta-llama/Llama-2-7b-chat-hf": ModelShape(6.74e9, 4096, 32, 32000, 11008, "table: Llama-2-7B"),
    "mistralai/Mistral-7B-v0.1": ModelShape(7.24e9, 4096, 32, 32000, 14336, "table: Mistral-7B-v0.1"),
}


def shape_from_config(config_path: Path) -> ModelShape:
    """Parameter count of a Llama-style decoder from its config.json (attention with GQA, gated MLP)."""
    cfg = json.loads(config_path.read_text())
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    vocab, inter = cfg["vocab_size"], cfg.get("intermediate_size", 4 * hidden)
    heads = cfg.get("num_attention_heads", 1)
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    per_layer = attention + 3 * hidden * inter + 2 * hidden
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return ModelShape(float(layers * per_layer + embeddings + hidden), hidden, layers, vocab, inter,
                      f"config.json: {config_path}")


def model_shape(base_model: str, inherited: ModelShape | None = None) -> ModelShape | None:
    """Known table, else a local config.json, else the shape inherited from the stage that writes that folder."""
    if base_model in KNOWN_MODELS:
        return KNOWN_MODELS[base_model]
    config = Path(base_model) / "config.json"
    if config.is_file():
        return shape_from_config(config)
    return inherited


@dataclass
class ZeroSetup:
    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    source: str = "no deepspeed config: every GPU holds a full copy (DDP)"


def zero_setup(deepspeed_json: str | None, root: Path) -> ZeroSetup:
    if not deepspeed_json:
        return ZeroSetup()
    path = Path(deepspeed_json)
    path = path if path.is_absolute() else root / path
    zero = json.loads(path.read_text()).get("zero_optimization", {})

    def on_cpu(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")).lower() == "cpu"

    return ZeroSetup(int(zero.get("stage", 0)), on_cpu("offload_optimizer"), on_cpu("offload_param"),
                     f"{deepspeed_json}")


@dataclass
class Estimate:
    rows: list[tuple[str, float]] = field(default_factory=list)  # (what, GiB per device)
    host_gib: float = 0.0  # per node, for offloaded states
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(gib for _, gib in self.rows)


def estimate(recipe: dict[str, Any], shape: ModelShape, world_size: int, gpus_per_node: int, root: Path) -> Estimate:
    """GiB per GPU for weights, gradients, optimizer states, the frozen reference model and activations."""
    zero = zero_setup(recipe.get("deepspeed"), root)
    world = max(1, world_size)
    p = shape.params
    preference = is_preference(recipe)
    reference = preference and str(recipe.get("rl")).lower() != "slic"  # the plugin's rl: slic keeps no reference model
    adapter = recipe.get("adapter")
    four_bit = bool(recipe.get("load_in_4bit"))
    est = Estimate()

    def shard(nbytes: float, zero_min_stage: int) -> float:
        return nbytes / world if zero.stage >= zero_min_stage else nbytes

    if adapter:
        weight_bytes = 0.55 * p if four_bit else 2.0 * p  # 4-bit NF4 + quantisation constants, or bf16
        r = int(recipe.get("lora_r") or 8)
        trainable = shape.layers * r * (4 * 2 * shape.hidden + 3 * (shape.hidden + shape.intermediate))
        weights = shard(weight_bytes, 3)
        est.rows.append((f"frozen base weights ({'4-bit' if four_bit else 'bf16'})", weights / GIB))
        est.rows.append((f"LoRA r={r}: {trainable / 1e6:.0f}M trainable params, grads + AdamW states (16 B/param)",
                         trainable * 16 / GIB))
        if reference:
            est.assumptions.append("reference model = the base with the adapter disabled: no second copy")
    else:
        weights = 0.0 if zero.offload_param else shard(2.0 * p, 3)
        grads = shard(2.0 * p, 2)
        optim = 0.0 if zero.offload_optimizer else shard(12.0 * p, 1)
        est.rows.append(("weights, bf16 (2 B/param)" + (" -> CPU" if zero.offload_param else ""), weights / GIB))
        est.rows.append(("gradients, bf16 (2 B/param)", grads / GIB))
        est.rows.append(("AdamW states, fp32 master + m + v (12 B/param)" + (" -> CPU" if zero.offload_optimizer else ""),
                         optim / GIB))
        if zero.offload_param:
            # ZeRO-3 gathers a few layers at a time onto the GPU.
            layer_params = (p - 2 * shape.vocab * shape.hidden) / shape.layers
            est.rows.append(("gathered working set (~2 layers + embeddings, bf16)",
                             (2 * layer_params + shape.vocab * shape.hidden) * 2 / GIB))
        host = (12.0 * p / world if zero.offload_optimizer else 0) + (2.0 * p / world if zero.offload_param else 0)
        if reference:
            ref = 0.0 if zero.offload_param else shard(2.0 * p, 3)
            est.rows.append(("frozen reference model, bf16" + (" -> CPU" if zero.offload_param else ""), ref / GIB))
            host += 2.0 * p / world if zero.offload_param else 0
        est.host_gib = host * gpus_per_node / GIB

    micro = int(recipe.get("micro_batch_size") or 1)
    seq = int(recipe.get("sequence_len") or 2048)
    rows_per_step = micro * (2 if preference else 1)  # chosen and rejected go through the model together
    tokens = rows_per_step * seq
    if recipe.get("gradient_checkpointing"):
        acts = tokens * shape.hidden * 2 * shape.layers + 34 * tokens * shape.hidden
        act_note = "gradient checkpointing: one bf16 hidden state per layer + one layer recomputed (34*s*b*h bytes)"
    else:
        acts = 34 * tokens * shape.hidden * shape.layers
        act_note = "no gradient checkpointing: 34*s*b*h bytes per layer"
    logits = tokens * shape.vocab * 4 * 2  # fp32 logits and their log-softmax
    est.rows.append((f"activations ({rows_per_step} x {seq} tokens)", acts / GIB))
    est.rows.append(("logits + log-softmax, fp32", logits / GIB))

    est.assumptions += [
        f"{shape.billions:.2f}B parameters ({shape.source})",
        f"ZeRO stage {zero.stage}, offload optimizer: {zero.offload_optimizer}, offload params: "
        f"{zero.offload_param} ({zero.source}); sharded over world size {world}",
        ("frozen base in 4-bit NF4 (~0.55 B/param with quantisation constants) or bf16; LoRA weights, grads and "
         "optimizer states ~16 B per trainable param" if adapter else
         "bf16 weights and gradients; AdamW keeps fp32 master weights + m + v = 12 bytes/param"),
        f"activations with flash-attention (no s^2 term); {act_note}",
    ]
    if reference and not adapter:
        est.assumptions.append("DPO-type stage: a frozen bf16 reference model, sharded like the policy")
    return est
