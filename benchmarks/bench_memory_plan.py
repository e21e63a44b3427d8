"""The dry run's memory plan (`smaug.training.memory.estimate`) against memory measured per process, part by part.

For each case (a tiny-to-small Llama x a ZeRO setting of recipes/deepspeed/, on 1 or 2 CPU processes with gloo)
it runs two DPOP training steps the way DPOPTrainer does (policy forward on [chosen; rejected], reference
forward without gradients, the DPOP loss, backward, AdamW step) and measures, in each process:
  - weights, reference, gradients, optimizer states: the bytes of the tensor storages that hold them after the
    backward of step 2 (the policy's and the reference's parameters or ZeRO-3 partitions, the gradient buffers,
    DeepSpeed's fp32 master partitions and the optimizer's state), each storage counted once;
  - activations and logits: the peak, during the forward and backward of step 2, of the bytes of storages
    created then (a live-tensor-bytes tracker, as in bench_dpop_vs_dpo.py); storages whose last dimension is
    the vocabulary are "logits" (policy and reference logits, their log-softmax and gradients), the rest is
    "activations" (including the parameters ZeRO-3 gathers for a layer);
  - other: what is alive after the backward and is none of the above (DeepSpeed's communication buckets etc).
On a CPU every part lives in the same memory, so the estimate's device and host shares are added up.
Everything is fp32 here (`bf16: false`, as the CPU twins train); the estimate takes the dtype from the recipe.

    python benchmarks/bench_memory_plan.py             # all cases, prints the table (make bench-memory-plan)
    python benchmarks/bench_memory_plan.py --markdown  # the same table as markdown (committed in benchmarks/README.md)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(Path(__file__).resolve().parent)]

from smaug.training.memory import PART_NAMES as PARTS  # noqa: E402  (weights, gradients, optimizer, reference, ...)

TOLERANCE = 0.25


@dataclass(frozen=True)
class Case:
    name: str
    hidden: int
    layers: int
    zero: str | None  # a file in recipes/deepspeed/, or None: one process, no DeepSpeed
    world: int = 2
    gradient_checkpointing: bool = False
    vocab: int = 4099  # odd on purpose: no other dimension equals it, so "last dim == vocab" means logits
    seq: int = 256
    micro: int = 2  # pairs per process and step: 2 x micro rows (chosen and rejected)

    @property
    def intermediate(self) -> int:
        return self.hidden * 8 // 3 // 64 * 64  # Llama's ratio, rounded

    @property
    def heads(self) -> int:
        return max(1, self.hidden // 64)


# Shapes, batch and vocabulary vary so that each term of the estimate is checked at more than one size.
CASES = [
    Case("h256 L4 V4099 2x256, 1 process, no DeepSpeed", 256, 4, None, world=1),
    Case("h256 L4 V8191 2x256, ZeRO-3", 256, 4, "zero3_bf16.json", vocab=8191),
    Case(
        "h512 L4 V4099 1x384, ZeRO-3 + optimizer offload", 512, 4, "zero3_bf16_offload_optimizer.json", seq=384, micro=1
    ),
    Case("h512 L8 V4099 2x256, ZeRO-3, gradient checkpointing", 512, 8, "zero3_bf16.json", gradient_checkpointing=True),
]


# --------------------------------------------------------------------------------------------------------------
# one process


def _unique_bytes(tensors, seen: set[int]) -> int:
    total = 0
    for tensor in tensors:
        if tensor is None or tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _param_tensors(module):
    for param in module.parameters():
        if hasattr(param, "ds_tensor"):
            yield param.ds_tensor  # this rank's ZeRO-3 partition
            if getattr(param, "ds_persist", False):
                yield param.data  # a small parameter ZeRO-3 keeps whole on every rank
            # else param.data is empty, or gathered for the current module: working set, counted as activations
        else:
            yield param.data


def measure(case: Case, rank: int, port: int, out: Path) -> None:
    """Runs in each process; writes {part: bytes} to out/rank{rank}.json."""
    import torch

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(case.world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from bench_common import LiveTensorBytes
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer import dpo_trainer as trl_dpo

    from axolotl_dpop.loss import dpop_loss

    tracker = LiveTensorBytes(classify=lambda t: "logits" if t.dim() and t.shape[-1] == case.vocab else "other")
    config = LlamaConfig(
        vocab_size=case.vocab,
        hidden_size=case.hidden,
        intermediate_size=case.intermediate,
        num_hidden_layers=case.layers,
        num_attention_heads=case.heads,
        num_key_value_heads=case.heads,
        max_position_embeddings=case.seq,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    with tracker:
        if case.zero:
            import deepspeed

            from tests.cpu_deepspeed import cpu_variant, prepare_cpu_deepspeed

            prepare_cpu_deepspeed()
            deepspeed.init_distributed(dist_backend="gloo")
            ds_config = cpu_variant(REPO_ROOT / "recipes" / "deepspeed" / case.zero)
            # what the HF trainer fills in for "auto"
            ds_config.update(
                train_micro_batch_size_per_gpu=case.micro,
                gradient_accumulation_steps=1,
                train_batch_size=case.micro * case.world,
                gradient_clipping=1.0,
            )
            zero = ds_config["zero_optimization"]
            zero.update(
                reduce_bucket_size=case.hidden**2,
                stage3_prefetch_bucket_size=int(0.9 * case.hidden**2),
                stage3_param_persistence_threshold=10 * case.hidden,
            )
            with deepspeed.zero.Init(config_dict_or_path=ds_config):  # as from_pretrained under ZeRO-3
                policy = LlamaForCausalLM(config)
                reference = LlamaForCausalLM(config)
            if case.gradient_checkpointing:
                policy.gradient_checkpointing_enable({"use_reentrant": False})
            offload = (zero.get("offload_optimizer") or {}).get("device") == "cpu"
            # accelerate swaps torch's AdamW for DeepSpeed's CPU Adam when the optimizer is offloaded
            if offload:
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer = DeepSpeedCPUAdam(policy.parameters(), lr=5e-5, adamw_mode=True)
            else:
                optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-5)
            engine, optimizer, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_config)
            ref_config = {k: v for k, v in ds_config.items() if k not in ("gradient_clipping",)}
            ref_engine, *_ = deepspeed.initialize(model=reference, config=ref_config)  # as TRL's prepare_deepspeed
            ref_engine.eval()
            zero_opt = engine.optimizer
        else:
            policy, reference = LlamaForCausalLM(config), LlamaForCausalLM(config)
            if case.gradient_checkpointing:
                policy.gradient_checkpointing_enable({"use_reentrant": False})
            reference.eval()
            engine, ref_engine = policy, reference
            optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-5)
        engine.train()

        generator = torch.Generator().manual_seed(rank)
        input_ids = torch.randint(0, case.vocab, (2 * case.micro, case.seq), generator=generator)
        completion_mask = torch.zeros_like(input_ids)
        completion_mask[:, case.seq // 2 :] = 1

        def logps(model):
            logits = model(input_ids=input_ids, use_cache=False).logits[..., :-1, :]
            per_token = trl_dpo.selective_log_softmax(logits, input_ids[..., 1:])
            per_token = per_token.masked_fill(completion_mask[..., 1:] == 0, 0.0)
            return per_token.sum(dim=1).chunk(2, dim=0)

        def forward_backward():
            chosen, rejected = logps(engine)  # DPOPTrainer.compute_loss: policy first, then the reference
            with torch.no_grad():
                ref_chosen, ref_rejected = logps(ref_engine)
            losses, *_ = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, 0.3, 50.0)
            loss = losses.mean()
            if case.zero:
                engine.backward(loss)
            else:
                loss.backward()

        def step():
            if case.zero:
                engine.step()
            else:
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)  # keep the gradient buffers: measured as a part

        forward_backward()
        step()  # step 1 creates the optimizer states
        before = dict(tracker.live_by)
        tracker.reset_peaks()
        forward_backward()
        transient = {
            "logits": tracker.peak_by.get("logits", 0) - before.get("logits", 0),
            "activations": tracker.peak_by.get("other", 0) - before.get("other", 0),
        }

        seen: set[int] = set()
        parts = {
            "weights": _unique_bytes(_param_tensors(engine.module if case.zero else policy), seen),
            "reference": _unique_bytes(_param_tensors(ref_engine.module if case.zero else reference), seen),
        }
        if case.zero:
            fp32 = zero_opt.fp32_partitioned_groups_flat
            parts["gradients"] = _unique_bytes([zero_opt.grad_partitions_flat_buffer] + [g.grad for g in fp32], seen)
            states = [v for s in zero_opt.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
            parts["optimizer"] = _unique_bytes(list(fp32) + states, seen)  # fp32 master (if a copy) + m + v
        else:
            parts["gradients"] = _unique_bytes([p.grad for p in policy.parameters()], seen)
            states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
            parts["optimizer"] = _unique_bytes(states, seen)
        attributed = sum(parts.values())
        parts.update(transient)
        parts["other"] = tracker.live - attributed
        parts["params"] = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in policy.parameters())
        step()
    (out / f"rank{rank}.json").write_text(json.dumps(parts))


def _spawned(rank: int, case: Case, port: int, out: str) -> None:
    measure(case, rank, port, Path(out))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_case(case: Case) -> list[dict]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as out:
        mp.spawn(_spawned, args=(case, _free_port(), out), nprocs=case.world, join=True)
        return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(case.world)]


# --------------------------------------------------------------------------------------------------------------
# the estimate for the same case


def estimate_parts(case: Case, params: int) -> dict[str, float]:
    from smaug.training import memory

    shape = memory.ModelShape(
        float(params),
        case.hidden,
        case.layers,
        case.vocab,
        case.intermediate,
        f"benchmark case {case.name}",
        heads=case.heads,
        kv_heads=case.heads,
    )
    recipe = {
        "rl": "dpop",
        "bf16": False,
        "micro_batch_size": case.micro,
        "sequence_len": case.seq,
        "gradient_checkpointing": case.gradient_checkpointing,
        "deepspeed": f"recipes/deepspeed/{case.zero}" if case.zero else None,
    }
    est = memory.estimate(recipe, shape, case.world, case.world, REPO_ROOT)
    return {part: device + host for part, (device, host) in est.parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--cases", type=int, nargs="*", help="indexes into CASES (default: all)")
    args = parser.parse_args()

    import torch

    cases = [CASES[i] for i in args.cases] if args.cases else CASES
    rows, worst, started = [], 0.0, time.monotonic()
    for case in cases:
        measured = run_case(case)
        estimate = estimate_parts(case, measured[0]["params"])
        for part in PARTS:
            peak = max(rank[part] for rank in measured)
            ratio = estimate.get(part, 0.0) / peak if peak else float("nan")
            if peak:
                worst = max(worst, abs(ratio - 1))
            rows.append((case.name, part, estimate.get(part, 0.0), peak, ratio))
        rows.append((case.name, "other (not modelled)", 0.0, max(rank["other"] for rank in measured), float("nan")))
    header = ("case", "part", "estimate MiB", "measured MiB (max over ranks)", "estimate / measured")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|---|---|---:|---:|---:|")
        for case, part, est, peak, ratio in rows:
            shown = "—" if ratio != ratio else f"{ratio:.2f}"
            print(f"| {case} | {part} | {est / 2**20:.2f} | {peak / 2**20:.2f} | {shown} |")
    else:
        print(f"{header[0]:<54}{header[1]:<22}{header[2]:>14}{header[3]:>31}{header[4]:>21}")
        for case, part, est, peak, ratio in rows:
            shown = "-" if ratio != ratio else f"{ratio:.2f}"
            print(f"{case:<54}{part:<22}{est / 2**20:14.2f}{peak / 2**20:31.2f}{shown:>21}")
    print(
        f"worst part: estimate off by {100 * worst:.1f}% (target <= {100 * TOLERANCE:.0f}%); torch {torch.__version__}, "
        f"{len(cases)} cases in {time.monotonic() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
