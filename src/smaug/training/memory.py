"""The memory plan of one training stage (for `--dry-run`): GPU memory per device and host RAM per node.

It should tell "fits on 8x80 GB" from "needs offload", and how much host RAM the offload needs, before anyone
pays for GPUs, and it states its assumptions so a reader can redo the sum. Each part (weights, gradients,
optimizer states, reference model, activations, logits) is checked against memory measured on CPU runs
under each ZeRO setting of recipes/deepspeed/ (benchmarks/bench_memory_plan.py, benchmarks/README.md).
Not a profiler: allocator fragmentation, NCCL buffers and DeepSpeed's bucket sizes come on top.
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
    heads: int = 0  # attention heads (0: unknown, taken as hidden / 128)
    kv_heads: int = 0  # key/value heads (grouped-query attention); 0: as many as heads

    @property
    def kv_dim(self) -> int:
        heads = self.heads or max(1, self.hidden // 128)
        return self.hidden * (self.kv_heads or heads) // heads

    @property
    def billions(self) -> float:
        return self.params / 1e9


# Published architecture numbers (config.json of each model); parameter counts computed from them.
KNOWN_MODELS: dict[str, ModelShape] = {
    "jondurbin/bagel-34b-v0.2": ModelShape(34.39e9, 7168, 60, 64000, 20480, "table: Yi-34B architecture", 56, 8),
    "moreh/MoMo-72B-lora-1.8.7-DPO": ModelShape(
        72.29e9, 8192, 80, 152064, 24576, "table: Qwen-72B architecture", 64, 64
    ),
    "meta-llama/Llama-2-7b-chat-hf": ModelShape(6.74e9, 4096, 32, 32000, 11008, "table: Llama-2-7B", 32, 32),
    "mistralai/Mistral-7B-v0.1": ModelShape(7.24e9, 4096, 32, 32000, 14336, "table: Mistral-7B-v0.1", 32, 8),
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
    return ModelShape(
        float(layers * per_layer + embeddings + hidden),
        hidden,
        layers,
        vocab,
        inter,
        f"config.json: {config_path}",
        heads,
        kv_heads,
    )


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

    return ZeroSetup(
        int(zero.get("stage", 0)), on_cpu("offload_optimizer"), on_cpu("offload_param"), f"{deepspeed_json}"
    )


# Where each part of a stage's memory lives, in bytes per process: (on the GPU, on the host). The dry run prints
# the GPU column; `host_gib` adds up the host column per node. benchmarks/bench_memory_plan.py compares each
# part with what a CPU run measures (benchmarks/README.md has the table).
PART_NAMES = ("weights", "gradients", "optimizer", "reference", "activations", "logits")


@dataclass
class Estimate:
    rows: list[tuple[str, float]] = field(default_factory=list)  # (what, GiB per device)
    host_rows: list[tuple[str, float]] = field(default_factory=list)  # (what, GiB per node)
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)  # part -> (device bytes, host bytes)
    assumptions: list[str] = field(default_factory=list)

    @property
    def total_gib(self) -> float:
        return sum(gib for _, gib in self.rows)

    @property
    def host_gib(self) -> float:
        return sum(gib for _, gib in self.host_rows)


def param_bytes(recipe: dict[str, Any]) -> int:
    """Bytes per weight in the recipe's training dtype: bf16/fp16 -> 2, else fp32 -> 4."""
    half = any(str(recipe.get(key)).lower() in {"true", "auto"} for key in ("bf16", "fp16"))
    return 2 if half else 4


def activation_bytes_per_token(shape: ModelShape, e: int) -> tuple[float, float]:
    """(one decoder layer, the final norm): bytes autograd keeps for backward per token, for a Llama-style layer
    (RMSNorm, rotary attention without an s^2 term: flash-attention or SDPA, gated MLP), tensor by tensor:
      each RMSNorm: its input, the fp32 normalised tensor, the output (+ an fp32 upcast of a half input);
      attention: q and k after rotary, v, the attention output and the contiguous copy o_proj gets
      = 3h + 2 kv_dim values (rotary's multiplications by cos/sin keep nothing of q and k themselves);
      MLP: gate, up, silu(gate) and their product = 4i values.
    Checked against measurement by benchmarks/bench_memory_plan.py (benchmarks/README.md)."""
    h, i = shape.hidden, shape.intermediate
    norm = h * (3 * e + (8 if e < 4 else 0))
    return 2 * norm + e * (3 * h + 2 * shape.kv_dim + 4 * i), norm


def estimate(recipe: dict[str, Any], shape: ModelShape, world_size: int, gpus_per_node: int, root: Path) -> Estimate:
    """Bytes per process for weights, gradients, optimizer states, the frozen reference model, activations and
    logits, and where they live (GPU or host) under the recipe's ZeRO stage and offload settings."""
    zero = zero_setup(recipe.get("deepspeed"), root)
    world = max(1, world_size)
    p = shape.params
    e = param_bytes(recipe)
    dtype = {2: "bf16", 4: "fp32"}[e]
    preference = is_preference(recipe)
    adapter = recipe.get("adapter")
    rl = str(recipe.get("rl") or "").lower()
    # No reference model in memory: the plugin's rl: slic has none, and a full fine-tune whose reference
    # log-probs are precomputed (by the initial policy, before training) loads none (the plugin skips axolotl's).
    no_reference = rl == "slic" or bool(recipe.get("precompute_ref_log_probs"))
    four_bit = bool(recipe.get("load_in_4bit"))
    est = Estimate()

    def part(name: str, label: str, nbytes: float, on_host: bool = False) -> None:
        device, host = est.parts.get(name, (0.0, 0.0))
        est.parts[name] = (device, host + nbytes) if on_host else (device + nbytes, host)
        if on_host:
            est.rows.append((f"{label} -> CPU", 0.0))
            est.host_rows.append((label, nbytes * gpus_per_node / GIB))
        else:
            est.rows.append((label, nbytes / GIB))

    def shard(nbytes: float, zero_min_stage: int) -> float:
        return nbytes / world if zero.stage >= zero_min_stage else nbytes

    if adapter:
        weight_bytes = 0.55 * p if four_bit else float(e) * p  # 4-bit NF4 + quantisation constants
        r = int(recipe.get("lora_r") or 8)
        trainable = shape.layers * r * (4 * 2 * shape.hidden + 3 * (shape.hidden + shape.intermediate))
        part("weights", f"frozen base weights ({'4-bit' if four_bit else dtype})", shard(weight_bytes, 3))
        part(
            "optimizer",
            f"LoRA r={r}: {trainable / 1e6:.0f}M trainable params, grads + AdamW states (16 B/param)",
            trainable * 16,
        )
        if preference and rl != "slic":
            est.assumptions.append("reference model = the base with the adapter disabled: no second copy")
    else:
        part("weights", f"weights, {dtype} ({e} B/param)", shard(e * p, 3), zero.offload_param)
        # ZeRO-3 keeps the reduced gradient partition in the training dtype, on the host when the optimizer is
        # offloaded, and there also an fp32 copy that the CPU optimizer steps on.
        part("gradients", f"gradients, {dtype} ({e} B/param)", shard(e * p, 2), zero.offload_optimizer)
        if zero.offload_optimizer and e < 4:
            part("gradients", "gradients, fp32 copy for the CPU optimizer (4 B/param)", 4 * p / world, True)
        elif zero.offload_optimizer:
            part("gradients", "gradients, copy for the CPU optimizer (4 B/param)", 4 * p / world, True)
        if zero.stage >= 1:
            # DeepSpeed keeps its own fp32 master partition (measured: even when the weights are fp32 already).
            part(
                "optimizer",
                "AdamW states, fp32 master + m + v (12 B/param)",
                shard(12.0 * p, 1),
                zero.offload_optimizer,
            )
        else:
            part("optimizer", f"AdamW states, m + v in {dtype} ({2 * e} B/param)", 2 * e * p)
        if preference and no_reference:
            part(
                "reference",
                "no reference model ("
                + ("rl: slic has none" if rl == "slic" else "reference log-probs precomputed")
                + ")",
                0.0,
            )
        elif preference:
            part("reference", f"frozen reference model, {dtype}", shard(e * p, 3), zero.offload_param)

    micro = int(recipe.get("micro_batch_size") or 1)
    seq = int(recipe.get("sequence_len") or 2048)
    rows_per_step = micro * (2 if preference else 1)  # chosen and rejected go through the model together
    tokens = rows_per_step * seq
    per_layer, final_norm = activation_bytes_per_token(shape, e)
    if recipe.get("gradient_checkpointing"):
        acts = tokens * (shape.layers * shape.hidden * e + per_layer + final_norm)
        act_note = "gradient checkpointing: each layer's input + one layer recomputed"
    else:
        acts = tokens * (shape.layers * per_layer + final_norm)
        act_note = "no gradient checkpointing: every layer's tensors"
    part("activations", f"activations ({rows_per_step} x {seq} tokens, {dtype})", acts)
    if zero.stage >= 3 and not adapter:
        # ZeRO-3 gathers one module's parameters at a time (+ the prefetch bucket, 0.9 h^2 when "auto").
        largest = max(shape.vocab * shape.hidden, shape.hidden * shape.intermediate)
        part(
            "activations",
            f"ZeRO-3 gathered parameters (largest module + prefetch, {dtype})",
            (largest + 0.9 * shape.hidden**2) * e,
        )
    # Peak in backward: the logits, their gradient and two more full-size tensors into which the backward of the
    # per-row log-softmax and gather scatter their gradients (measured 4.05x on CPU; axolotl's fused Triton
    # log-softmax on GPUs needs less, so this errs high there). In forward, policy + reference logits = 2x.
    if recipe.get("dpop_chunked_logps"):
        # The plugin's token-chunked head: one chunk of fp32 logits at a time, twice in backward (recomputed
        # logits and their gradient), plus the head's weight gradient until it is reduced (benchmarks/
        # bench_chunked_logps.py measured 0.19x the full-logits step at vocab 152k).
        chunk = min(int(recipe.get("dpop_logps_chunk_size") or 1024), tokens)
        part(
            "logits",
            f"chunked head: 2 x {chunk}-token chunk x vocab (fp32) + head gradient ({dtype})",
            2 * chunk * shape.vocab * 4 + shape.vocab * shape.hidden * e,
        )
    else:
        part(
            "logits",
            f"logits and the log-softmax backward (4 x {rows_per_step} x {seq} x vocab, {dtype})",
            4 * tokens * shape.vocab * e,
        )

    est.assumptions += [
        f"{shape.billions:.2f}B parameters ({shape.source})",
        f"ZeRO stage {zero.stage}, offload optimizer: {zero.offload_optimizer}, offload params: "
        f"{zero.offload_param} ({zero.source}); sharded over world size {world}",
        (
            f"frozen base in 4-bit NF4 (~0.55 B/param with quantisation constants) or {dtype}; LoRA weights, grads "
            "and optimizer states ~16 B per trainable param"
            if adapter
            else f"{dtype} weights and gradients; AdamW m + v (DeepSpeed: + fp32 master weights)"
        ),
        f"activations without an s^2 attention term (flash-attention / SDPA); {act_note}",
    ]
    if preference and not adapter and not no_reference:
        est.assumptions.append(f"DPO-type stage: a frozen {dtype} reference model, sharded like the policy")
    return est
