"""Before any GPU time: does this node have the GPUs the chain's `hardware:` asks for?"""

from __future__ import annotations

from typing import Any

from smaug.common.errors import UserError
from smaug.training.chains.plan import Chain, Launch
from smaug.training.memory import GIB


def hardware_text(hardware: dict[str, Any]) -> str:
    """What a chain needs, as the dry run and the READMEs show it: its label and the host RAM it states."""
    text = str(hardware.get("label") or hardware.get("accelerator", "?"))
    ram = hardware.get("host_ram_gb")
    if ram:
        text += f", ~{ram / 1000:g} TB host RAM" if ram >= 1000 else f", ~{ram:g} GB host RAM"
    return text


def detect_gpus() -> tuple[list[float], str]:
    """(memory in GiB of each CUDA device, how they were found)."""
    import torch

    if not torch.cuda.is_available():
        return [], f"no CUDA device (torch {torch.__version__}: torch.cuda.device_count() == 0)"
    count = torch.cuda.device_count()
    sizes = [torch.cuda.get_device_properties(i).total_memory / GIB for i in range(count)]
    names = sorted({torch.cuda.get_device_name(i) for i in range(count)})
    return sizes, f"{count} CUDA device(s): {', '.join(names)}"


def preflight(chain: Chain, launch: Launch, gpus: tuple[list[float], str] | None = None) -> None:
    hardware = chain.hardware
    if hardware.get("accelerator") != "cuda":
        return
    need_total, need_gib = int(hardware.get("gpus") or 1), float(hardware.get("min_gpu_memory_gib") or 0)
    sizes, found = gpus if gpus is not None else detect_gpus()
    problems = []
    if launch.world_size < need_total:
        problems.append(
            f"it is sized for {need_total} GPUs in total but NUM_GPUS x NNODES = "
            f"{launch.num_gpus} x {launch.nnodes} = {launch.world_size}"
        )
    if len(sizes) < launch.num_gpus:
        problems.append(f"this node should have NUM_GPUS={launch.num_gpus} GPUs and has {found}")
    small = [f"{gib:.0f} GiB" for gib in sizes[: launch.num_gpus] if gib < need_gib]
    if small:
        problems.append(f"each GPU needs >= {need_gib:.0f} GiB; found {', '.join(small)} ({found})")
    if problems:
        raise UserError(
            f"chain {chain.name} needs {hardware_text(hardware)} ({need_total} GPUs, >= {need_gib:.0f} GiB "
            f"each) and stops before using any GPU time: " + "; ".join(problems) + ".\n"
            f"  See the plan, exact commands and a GPU memory estimate (no GPU needed): "
            f"DRY_RUN=1 make {chain.name}   (smaug chain run {chain.name} --dry-run)\n"
            f"  Run the same chain on this CPU in minutes: make smaug-tiny (or make demo)\n"
            f"  Several nodes: set NUM_GPUS (per node), NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each.\n"
            f"  Know better (e.g. a different card): SMAUG_SKIP_PREFLIGHT=1 make {chain.name} (--skip-preflight) "
            "skips this check."
        )
