"""What a training stage needs before anyone pays for GPUs (`--dry-run`): GPU memory per device and host RAM per
node, part by part (allocator fragmentation, NCCL and DeepSpeed's buffers come on top), and its projected cost."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from smaug.training.recipes import is_preference

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    params: float
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    source: str  # where the numbers come from
    heads: int = 0  # 0: unknown, taken as hidden / 128
    kv_heads: int = 0  # grouped-query attention; 0: as many as heads


# Published architecture numbers (config.json of each model); parameter counts computed from them.
KNOWN_MODELS: dict[str, ModelShape] = {
    "jondurbin/bagel-34b-v0.2": ModelShape(34.39e9, 7168, 60, 64000, 20480, "table: Yi-34B architecture", 56, 8),
    "moreh/MoMo-72B-lora-1.8.7-DPO": ModelShape(72.29e9, 8192, 80, 152064, 24576, "table: Qwen-72B architecture", 64),
    "meta-llama/Llama-2-7b-chat-hf": ModelShape(6.74e9, 4096, 32, 32000, 11008, "table: Llama-2-7B", 32, 32),
    "mistralai/Mistral-7B-v0.1": ModelShape(7.24e9, 4096, 32, 32000, 14336, "table: Mistral-7B-v0.1", 32, 8),
}


def model_shape(base_model: str, inherited: ModelShape | None = None) -> ModelShape | None:
    """Known table, else a local model's config (its parameters counted on transformers' own model, built
    without memory), else the shape inherited from the stage that writes that folder."""
    if base_model in KNOWN_MODELS:
        return KNOWN_MODELS[base_model]
    if not (Path(base_model) / "config.json").is_file():
        return inherited
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_model)
    with init_empty_weights():
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    source = f"config.json: {Path(base_model) / 'config.json'}"
    inter = getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size, inter, source, cfg.num_attention_heads)
    return ModelShape(float(params), *shape, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)


# The parts of a stage's memory, each (bytes on the GPU, bytes on the host) per process; benchmarks/
# bench_memory_plan.py compares each with a measured CPU run (benchmarks/README.md has the table).
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
    return 2 if any(str(recipe.get(key)).lower() in {"true", "auto"} for key in ("bf16", "fp16")) else 4


def lora_params(shape: ModelShape, r: int) -> int:
    """Trainable parameters of LoRA rank r on every linear layer of a Llama-style decoder."""
    return shape.layers * r * (4 * 2 * shape.hidden + 3 * (shape.hidden + shape.intermediate))


def estimate(recipe: dict[str, Any], shape: ModelShape, world_size: int, gpus_per_node: int, root: Path) -> Estimate:
    """Bytes per process for weights, gradients, optimizer states, the frozen reference model, activations and
    logits, and where they live (GPU or host) under the recipe's ZeRO stage and offload settings."""
    ds = recipe.get("deepspeed")
    zero = json.loads((root / ds).read_text()).get("zero_optimization", {}) if ds else {}  # `/` keeps absolute
    stage = int(zero.get("stage", 0))
    off_opt, off_param = ((zero.get(k) or {}).get("device") == "cpu" for k in ("offload_optimizer", "offload_param"))
    world, p, e = max(1, world_size), shape.params, param_bytes(recipe)
    dtype = {2: "bf16", 4: "fp32"}[e]
    preference, adapter, rl = is_preference(recipe), recipe.get("adapter"), str(recipe.get("rl") or "").lower()
    # No reference model in memory: rl: slic has none, and a full fine-tune whose reference log-probs are
    # precomputed (by the initial policy, before training) loads none (the plugin skips axolotl's).
    no_reference = rl == "slic" or bool(recipe.get("precompute_ref_log_probs"))
    source = ds or "no deepspeed config: every GPU holds a full copy (DDP)"
    est = Estimate(
        assumptions=[
            f"{p / 1e9:.2f}B parameters ({shape.source})",
            f"ZeRO stage {stage}, offload optimizer: {off_opt}, offload params: {off_param} ({source}); "
            f"sharded over world size {world}",
        ]
    )

    def part(name: str, label: str, nbytes: float, on_host: bool = False) -> None:
        device, host = est.parts.get(name, (0.0, 0.0))
        est.parts[name] = (device, host + nbytes) if on_host else (device + nbytes, host)
        est.rows.append((f"{label} -> CPU", 0.0) if on_host else (label, nbytes / GIB))
        est.host_rows += [(label, nbytes * gpus_per_node / GIB)] if on_host else []

    def shard(nbytes: float, zero_min_stage: int) -> float:
        return nbytes / world if stage >= zero_min_stage else nbytes

    if adapter:
        four_bit, r = bool(recipe.get("load_in_4bit")), int(recipe.get("lora_r") or 8)
        weight_bytes = 0.55 * p if four_bit else float(e) * p  # 4-bit NF4 + quantisation constants
        part("weights", f"frozen base weights ({'4-bit' if four_bit else dtype})", shard(weight_bytes, 3))
        trainable = lora_params(shape, r)
        label = f"LoRA r={r}: {trainable / 1e6:.0f}M trainable params, grads + AdamW states (16 B/param)"
        part("optimizer", label, trainable * 16)
        est.assumptions.append(
            f"frozen base in 4-bit NF4 (~0.55 B/param with quantisation constants) or {dtype}; LoRA weights, grads "
            "and optimizer states ~16 B per trainable param"
        )
        if preference and rl != "slic":
            est.assumptions.append("reference model = the base with the adapter disabled: no second copy")
    else:
        part("weights", f"weights, {dtype} ({e} B/param)", shard(e * p, 3), off_param)
        # ZeRO keeps the reduced gradient partition in the training dtype, on the host when the optimizer is
        # offloaded, and there also an fp32 copy that the CPU optimizer steps on.
        part("gradients", f"gradients, {dtype} ({e} B/param)", shard(e * p, 2), off_opt)
        if off_opt:
            label = f"gradients, {'fp32 copy' if e < 4 else 'copy'} for the CPU optimizer (4 B/param)"
            part("gradients", label, 4 * p / world, True)
        if stage >= 1:  # DeepSpeed keeps its own fp32 master partition, measured even for fp32 weights
            part("optimizer", "AdamW states, fp32 master + m + v (12 B/param)", shard(12.0 * p, 1), off_opt)
        else:
            part("optimizer", f"AdamW states, m + v in {dtype} ({2 * e} B/param)", 2 * e * p)
        est.assumptions.append(f"{dtype} weights and gradients; AdamW m + v (DeepSpeed: + fp32 master weights)")
        if preference and no_reference:
            why = "rl: slic has none" if rl == "slic" else "reference log-probs precomputed"
            part("reference", f"no reference model ({why})", 0.0)
        elif preference:
            part("reference", f"frozen reference model, {dtype}", shard(e * p, 3), off_param)
            est.assumptions.append(f"DPO-type stage: a frozen {dtype} reference model, sharded like the policy")

    # Activations autograd keeps per token of a Llama-style layer (RMSNorm, rotary attention without an s^2 term:
    # flash-attention or SDPA, gated MLP), tensor by tensor: each RMSNorm its input, the fp32 normalised tensor
    # and the output (+ an fp32 upcast of a half input); attention q and k after rotary, v, the attention output
    # and the contiguous copy o_proj gets = 3h + 2 kv_dim values (rotary's multiplications by cos/sin keep
    # nothing of q and k themselves); the MLP's gate, up, silu(gate) and their product = 4i values.
    h, heads = shape.hidden, shape.heads or max(1, shape.hidden // 128)
    norm = h * (3 * e + (8 if e < 4 else 0))
    per_layer = 2 * norm + e * (3 * h + 2 * h * (shape.kv_heads or heads) // heads + 4 * shape.intermediate)
    rows_per_step = int(recipe.get("micro_batch_size") or 1) * (2 if preference else 1)  # chosen + rejected
    seq = int(recipe.get("sequence_len") or 2048)
    tokens = rows_per_step * seq
    if recipe.get("gradient_checkpointing"):
        kept, how = (
            shape.layers * h * e + per_layer,
            "gradient checkpointing: each layer's input + one layer recomputed",
        )
    else:
        kept, how = shape.layers * per_layer, "no gradient checkpointing: every layer's tensors"
    part("activations", f"activations ({rows_per_step} x {seq} tokens, {dtype})", tokens * (kept + norm))
    est.assumptions.append(f"activations without an s^2 attention term (flash-attention / SDPA); {how}")
    shared = bool(recipe.get("dpop_shared_prefix"))
    if shared:
        # One tree per pair (or per question with dpop_group_pairs): the common prefix once, then each answer's
        # rest. A pair that shares only a short prompt is as long as its two rows, so the bound above stands.
        trees, width = rows_per_step // 2, 2 * seq
        per_layer_copies = 1 if recipe.get("gradient_checkpointing") else shape.layers
        label = f"tree attention mask ({trees} x {width}^2: bool, + {dtype} in SDPA per layer kept)"
        part("activations", label, trees * width**2 * (1 + e * per_layer_copies))
        est.assumptions.append(
            "dpop_shared_prefix: activations counted for the longest pair (2 x sequence_len tokens; the Smaug mix "
            "averages ~0.7x of that, benchmarks/bench_shared_prefix.py)"
            + (
                "; dpop_group_pairs: a question's pairs are one tree, beyond micro_batch_size"
                * bool(recipe.get("dpop_group_pairs"))
            )
        )
    if stage >= 3 and not adapter:
        # ZeRO-3 gathers one module's parameters at a time (+ the prefetch bucket, 0.9 h^2 when "auto").
        largest = max(shape.vocab * h, h * shape.intermediate)
        part(
            "activations",
            f"ZeRO-3 gathered parameters (largest module + prefetch, {dtype})",
            (largest + 0.9 * h**2) * e,
        )
    if recipe.get("dpop_chunked_logps") or shared:  # the shared forward uses the chunked head
        # The plugin's token-chunked head: one chunk of fp32 logits at a time, twice in backward (recomputed
        # logits and their gradient), plus the head's weight gradient until it is reduced.
        chunk = min(int(recipe.get("dpop_logps_chunk_size") or 1024), tokens)
        label = f"chunked head: 2 x {chunk}-token chunk x vocab (fp32) + head gradient ({dtype})"
        part("logits", label, 2 * chunk * shape.vocab * 4 + shape.vocab * h * e)
    else:
        # Peak in backward: the logits, their gradient and two full-size tensors the backward of the per-row
        # log-softmax and gather scatter into (measured 4.05x on CPU; axolotl's fused kernel on GPUs needs less).
        label = f"logits and the log-softmax backward (4 x {rows_per_step} x {seq} x vocab, {dtype})"
        part("logits", label, 4 * tokens * shape.vocab * e)
    return est


# The projected cost: FLOPs per trained token 6N (forward 2N, backward 4N; 4N when a frozen base gets no weight
# gradients), + 2N to recompute the forward under gradient checkpointing, + 2N for the reference forward of a
# DPO-type stage (rl: slic has none; precomputed log-probs cost the same pass, once). Every row is counted at
# full sequence_len and attention's s^2 term is left out. The GPUs are taken to be H100 SXM at this MFU.
H100_BF16_FLOPS = 989e12  # dense bf16 peak of one H100 SXM
MFU = 0.40


class Cost(NamedTuple):
    gpus: int
    sequence_len: int
    tokens_per_step: int
    steps: int
    gpu_hours: float
    checkpoints: int  # kept at the end of the run
    checkpoint_gb: float

    def line(self) -> str:
        return (
            f"projected cost: {self.gpu_hours:,.0f} GPU-hours, {self.gpu_hours / self.gpus:.1f} h on {self.gpus} "
            f"GPUs ({self.tokens_per_step:,} tokens per step x {self.steps} steps, H100 at {MFU:.0%} MFU); "
            f"{self.checkpoints} checkpoints kept, ~{self.checkpoint_gb:.0f} GB each"
        )


def projected_cost(recipe: dict[str, Any], hardware: dict[str, Any], shape: ModelShape) -> Cost:
    gpus = int(hardware.get("gpus") or 1)
    seq, steps = int(recipe.get("sequence_len") or 2048), int(recipe.get("max_steps") or 0)
    pairs = int(recipe.get("micro_batch_size") or 1) * int(recipe.get("gradient_accumulation_steps") or 1) * gpus
    tokens = pairs * seq * (2 if is_preference(recipe) else 1)
    adapter = bool(recipe.get("adapter"))
    per_token = (4 if adapter else 6) + 2 * bool(recipe.get("gradient_checkpointing"))
    per_token += 2 * (is_preference(recipe) and str(recipe.get("rl")).lower() != "slic")
    gpu_hours = per_token * shape.params * tokens * steps / (H100_BF16_FLOPS * MFU) / 3600
    kept = min(steps // int(recipe.get("save_steps") or steps or 1), int(recipe.get("save_total_limit") or steps))
    # A checkpoint holds the weights and what resuming needs: LoRA's ~16 B per trainable parameter; a full
    # fine-tune's 16-bit weights + DeepSpeed's fp32 master, m and v (12 B), or torch AdamW's m and v.
    e = param_bytes(recipe)
    lora = 16 * lora_params(shape, int(recipe.get("lora_r") or 8))
    size = lora if adapter else shape.params * (e + (12 if recipe.get("deepspeed") else 2 * e))
    return Cost(gpus, seq, tokens, steps, gpu_hours, kept, size / 1e9)
