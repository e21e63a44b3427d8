"""Test-only axolotl plugin: lets a DeepSpeed launch run on a machine without CUDA (gloo between CPU ranks).

Where the world size is lost: `accelerate launch --use_deepspeed` starts the ranks with LOCAL_RANK set and
ACCELERATE_USE_DEEPSPEED=true. accelerate's `PartialState._prepare_backend` only knows device backends
(nccl, hccl, xccl, ...); without CUDA it returns no backend, so PartialState decides "not distributed" and
reports one process, although DeepSpeed's `init_distributed` has already formed a 2-rank group. The HF
trainer then fills the DeepSpeed config's `train_batch_size` with world size 1 and DeepSpeed, which sees 2
ranks, rejects it (`train_batch_size ... 2 != 2 * 1 * 2`). With ACCELERATE_USE_CPU=true accelerate picks gloo
but never DeepSpeed (it wraps the ZeRO-3 model in DDP instead).

This is accelerate's missing "DeepSpeed on the CPU accelerator" case, which no GPU run and no user of the
recipes reaches, so the fix lives here and is listed only in the tests' CPU configs: the backend becomes
gloo (what DeepSpeed's CPU accelerator uses without oneCCL) and everything else is accelerate's own
DeepSpeed path. It changes nothing when CUDA is available or when DeepSpeed is not being launched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

PLUGIN = "tests.cpu_deepspeed.CPUDeepSpeedPlugin"
REPORT = "cpu_deepspeed_rank{rank}.json"  # what each rank found after its first step, for the tests to assert


def _deepspeed_rank_without_cuda(cpu: bool) -> bool:
    import torch

    return (
        not cpu
        and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        and int(os.environ.get("LOCAL_RANK", -1)) != -1
        and not torch.cuda.is_available()
    )


def patch_accelerate_backend() -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    original = PartialState._prepare_backend
    if getattr(original, "_cpu_deepspeed", False):
        return

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        found, distributed_type = original(self, cpu, sagemaker_dp, backend)
        if found is None and _deepspeed_rank_without_cuda(cpu):
            # MULTI_CPU until PartialState has the process group, then it switches to DEEPSPEED itself.
            return "gloo", DistributedType.MULTI_CPU
        return found, distributed_type

    prepare_backend._cpu_deepspeed = True
    PartialState._prepare_backend = prepare_backend


def skip_shared_memory_allreduce_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a C++ shared-memory all-reduce when it starts (~1 min on 2 cores,
    once per machine). Only tensor-parallel inference uses it (`inference_all_reduce`); ZeRO training talks
    through torch.distributed (gloo here), so the tests skip the build."""
    import importlib

    # importlib: `import deepspeed.comm.torch` would bind the `torch` name that deepspeed.comm re-exports.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def wait_on_collectives() -> None:
    """Makes every asynchronous collective complete before it returns. DeepSpeed treats its CPU accelerator as a
    "synchronized device" and skips the stream waits it relies on with NCCL, but gloo runs an async collective
    on its own thread: ZeRO-3 then now and then reads a gather or reduce buffer before it is filled (measured:
    2 of 4 two-rank runs of tests/zero3_chunked_worker.py ended with parameters of 1e10 or inf after the
    step; 0 of 12 with this). GPU runs (NCCL, CUDA streams) take DeepSpeed's own waits. Must run before
    DeepSpeed's communication backend starts: it keeps references to these functions."""
    import torch.distributed as dist

    def waited(collective):
        def call(*args, **kwargs):
            work = collective(*args, **kwargs)
            if kwargs.get("async_op") and work is not None:
                work.wait()
            return work

        call._waited = True
        return call

    for name in (
        "all_gather_into_tensor",
        "all_gather",
        "reduce_scatter_tensor",
        "reduce_scatter",
        "all_reduce",
        "all_reduce_coalesced",
        "broadcast",
        "_all_gather_base",
        "_reduce_scatter_base",
    ):
        collective = getattr(dist, name, None)
        if collective is not None and not getattr(collective, "_waited", False):
            setattr(dist, name, waited(collective))


def prepare_cpu_deepspeed() -> None:
    """What every DeepSpeed start on the CPU here needs before `deepspeed.init_distributed`: no shared-memory
    all-reduce build, and collectives that finish before they return."""
    skip_shared_memory_allreduce_build()
    wait_on_collectives()


# What a CPU needs changed in the recipes' DeepSpeed configs, and nothing else: bf16 off (transformers refuses
# bf16 without CUDA unless `use_cpu`, which axolotl does not expose; the CPU twins train in fp32).
CPU_CHANGES = {"bf16": {"enabled": False}}


def cpu_variant(config_path: str | Path) -> dict:
    """The committed DeepSpeed JSON with CPU_CHANGES applied."""
    config = json.loads(Path(config_path).read_text())
    for section, values in CPU_CHANGES.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def _local_and_full_numel(module) -> tuple[int, int]:
    """Parameters this rank holds vs the model's: a ZeRO-3 partition (`ds_tensor`) or the whole tensor."""
    local = full = 0
    for param in module.parameters():
        local += param.ds_tensor.numel() if hasattr(param, "ds_tensor") else param.numel()
        full += getattr(param, "ds_numel", param.numel())
    return local, full


def _optimizer_classes(engine) -> list[str]:
    """DeepSpeed's ZeRO wrapper and the optimizer that does the update inside it."""
    names, optimizer = [], engine.optimizer
    while optimizer is not None and len(names) < 4:
        names.append(type(optimizer).__name__)
        optimizer = getattr(optimizer, "optimizer", None)
    return names


class EngineReport(TrainerCallback):
    """Writes, per rank, what the trainer really runs: the DeepSpeed engines of the policy and the reference
    model, their ZeRO stage and offload devices, the optimizer classes and how much of each model the rank holds."""

    def __init__(self, trainer, output_dir: str):
        self.trainer, self.output_dir, self.written = trainer, Path(output_dir), False

    def on_step_end(self, args, state, control, **kwargs):
        if self.written:
            return
        import torch.distributed as dist

        engine, ref = self.trainer.model_wrapped, self.trainer.ref_model

        def offload(value):
            return None if value is None else str(getattr(value.device, "value", value.device))

        report = {
            "world_size": dist.get_world_size(),
            "rank": dist.get_rank(),
            "backend": dist.get_backend(),
            "policy_engine": type(engine).__name__,
            "reference_engine": type(ref).__name__,
            "zero_stage": engine.zero_optimization_stage(),
            "reference_zero_stage": ref.zero_optimization_stage() if hasattr(ref, "zero_optimization_stage") else None,
            "offload_optimizer": offload(engine.zero_offload_optimizer()),
            "offload_param": offload(engine.zero_offload_param()),
            "reference_offload_param": offload(ref.zero_offload_param())
            if hasattr(ref, "zero_offload_param")
            else None,
            "optimizer": _optimizer_classes(engine),
            "policy_params": _local_and_full_numel(engine.module),
            "reference_params": _local_and_full_numel(getattr(ref, "module", ref)),
            "train_batch_size": engine.train_batch_size(),
            "micro_batch_per_rank": engine.train_micro_batch_size_per_gpu(),
            "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / REPORT.format(rank=report["rank"])).write_text(json.dumps(report, indent=2))
        self.written = True


class CPUDeepSpeedPlugin(BasePlugin):
    def register(self, cfg: dict):
        # Runs in every rank while the config loads, before axolotl sets up DeepSpeed's distributed state.
        patch_accelerate_backend()
        prepare_cpu_deepspeed()

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [EngineReport(trainer, cfg.output_dir)]
