"""What `--dry-run` and `smaug chain status` print: stages, commands, the memory plan (GPU per device, host
RAM per node next to what chains.yaml states) and where each stage stands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smaug.common.paths import REPO_ROOT, rel
from smaug.training import lock, memory, runner, template_tokens
from smaug.training.chains.commands import merge_command, train_command
from smaug.training.chains.inputs import prepared_folder, stage_inputs
from smaug.training.chains.plan import PENDING_PREPARED, Chain, ChainStage, Launch
from smaug.training.chains.progress import assess_chain, next_step, state_text
from smaug.training.preflight import hardware_text
from smaug.training.state import (
    StageState,
)


def host_ram_check(hardware: dict[str, Any], est: memory.Estimate) -> list[str]:
    """The estimate's host RAM per node next to what recipes/chains.yaml states for the chain."""
    need_gb = est.host_gib * memory.GIB / 1e9
    stated = hardware.get("host_ram_gb")
    if stated is None:
        verdict = "recipes/chains.yaml states no host_ram_gb for this chain: add it"
    elif need_gb <= float(stated):
        verdict = f"recipes/chains.yaml states {stated:g} GB: ok"
    else:
        verdict = f"MORE than the {stated:g} GB recipes/chains.yaml states: correct host_ram_gb there"
    lines = [
        f"    host RAM per node for offloaded states (estimate): {need_gb:.0f} GB ({est.host_gib:.0f} GiB); {verdict}"
    ]
    lines += [f"      {what:<76s} {gib * memory.GIB / 1e9:7.0f} GB" for what, gib in est.host_rows]
    return lines


def describe(
    chain: Chain,
    launch: Launch,
    tracking: dict[int, dict[str, Any]] | None = None,
    states: list[StageState] | None = None,
) -> str:
    tracking = tracking or {}
    states = states or assess_chain(chain)
    hw = chain.hardware
    lines = [
        f"chain {chain.name}: {chain.description}",
        f"hardware: {hardware_text(hw)}"
        + (
            f" ({hw.get('gpus')} GPUs in total, >= {hw.get('min_gpu_memory_gib')} GiB each)"
            if hw.get("accelerator") == "cuda"
            else ""
        ),
        f"launch: NUM_GPUS={launch.num_gpus} NNODES={launch.nnodes} NODE_RANK={launch.node_rank} "
        f"MASTER_ADDR={launch.master_addr} MASTER_PORT={launch.master_port} (world size {launch.world_size})",
        f"output root: {chain.output_root}",
    ]
    if hw.get("accelerator") == "cuda" and launch.world_size != int(hw.get("gpus") or 1):
        lines.append(
            f"WARNING: NUM_GPUS x NNODES = {launch.world_size}, but the recipes are sized for "
            f"{hw.get('gpus')} GPUs in total (the run's preflight stops on fewer)"
        )
    for step in chain.prepare:
        lines.append(
            f"prepare: smaug showcase tiny-model {step['tiny_model']}"
            + ("  [exists, skipped]" if (step["tiny_model"] / "config.json").is_file() else "")
        )
    shapes: dict[Path, memory.ModelShape | None] = {}
    for stage, state in zip(chain.stages, states):
        recipe = stage.recipe
        kind = recipe.get("rl") or "sft"
        if recipe.get("dpo_loss_type"):
            kind += f" ({', '.join(recipe['dpo_loss_type'])})"
        if recipe.get("adapter"):
            kind += f", {recipe['adapter']}"
        step = next_step(chain, stage, state)
        lines += [
            "",
            f"stage {stage.index + 1}/{len(chain.stages)}: {stage.name}  [{kind}]  ({state_text(state)}: "
            f"{'STOPS: ' + step.fix if step.blocking else step.text})",
            f"  base_model: {recipe['base_model']}",
            f"  output_dir: {stage.output_dir}",
        ]
        hyper = [
            f"{k}={recipe[k]}"
            for k in (
                "rl_beta",
                "dpop_lambda",
                "slic_lambda",
                "learning_rate",
                "optimizer",
                "max_steps",
                "micro_batch_size",
                "gradient_accumulation_steps",
                "sequence_len",
            )
            if recipe.get(k) is not None
        ]
        lines.append(f"  settings: {', '.join(hyper)}")
        lines += template_tokens.dry_run_lines(recipe, where=stage.where(chain.name))
        if stage.rebased:
            lines.append(f"  config: {stage.run_config} (the recipe with paths under {chain.output_root})")
        overrides = {
            **tracking.get(stage.index, {}),
            "dataset_prepared_path": _planned_prepared(chain, stage, state, states),
        }
        command = train_command(stage, launch, hw.get("accelerator", "cuda"), overrides)
        lines.append(f"  command: {runner.display(command)}")
        if str(overrides["dataset_prepared_path"]).endswith(PENDING_PREPARED):
            lines.append(
                f"  ({PENDING_PREPARED}: inputs-<digest of its data files and base>, known once the stage "
                "it starts from has run)"
            )
        if stage.merge_lora:
            lines.append(
                f"  then:    {runner.display(merge_command(stage))}" + ("   (node 0 only)" if launch.nnodes > 1 else "")
            )
        base = str(recipe["base_model"])
        inherited = shapes.get(stage.base_path) if stage.base_path else None
        shape = memory.model_shape(base, inherited)
        shapes[stage.output_dir] = shape
        shapes[stage.output_dir / "merged"] = shape
        if shape is None:
            lines.append("  GPU memory: no estimate (base model not in the known table and no local config.json)")
            continue
        est = memory.estimate(recipe, shape, launch.world_size, launch.num_gpus, REPO_ROOT)
        lines.append("  GPU memory per device (estimate):")
        lines += [f"    {what:<78s} {gib:7.1f} GiB" for what, gib in est.rows]
        budget = chain.hardware.get("min_gpu_memory_gib")
        verdict = ""
        if budget:
            verdict = "  -> fits" if est.total_gib <= float(budget) else f"  -> does NOT fit in {budget} GiB"
        lines.append(
            f"    {'total (+ allocator/NCCL overhead, typically a few GiB)':<78s} {est.total_gib:7.1f} GiB{verdict}"
        )
        if est.host_gib:
            lines += host_ram_check(hw, est)
        lines.append("    assumptions: " + "; ".join(est.assumptions))
        if hw.get("accelerator") == "cuda":
            lines.append("  " + memory.projected_cost(recipe, hw, shape).line())
    return "\n".join(lines)


def _planned_prepared(chain: Chain, stage: ChainStage, state: StageState, states: list[StageState]) -> str:
    recorded = (state.record or {}).get("dataset_prepared_path") if state.kind == "resumable" else None
    if recorded:
        return rel(recorded)
    try:
        # the recorded inputs let unchanged files be taken from their size and mtime (assess just hashed them)
        inputs = stage_inputs(chain, stage, states[: stage.index], (state.record or {}).get("inputs"))
        folder = prepared_folder(stage, inputs)
    except OSError:
        folder = None
    return rel(folder) if folder else rel(stage.prepared_root) + "/" + PENDING_PREPARED


def status_report(chain: Chain) -> str:
    """`smaug chain status`: each stage's state, folder, last logged step and loss, and what the next run does.
    Files only: no model, no axolotl, no GPU, no network."""
    states = assess_chain(chain)
    steps = [next_step(chain, stage, state) for stage, state in zip(chain.stages, states)]
    lines = [f"chain {chain.name}: {chain.description}", f"output root: {chain.output_root}"]
    for stage, state, step in zip(chain.stages, states, steps):
        lines += [
            "",
            f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: {state_text(state)}",
            f"  output: {stage.output_dir}",
        ]
        if state.logged_step is not None:
            where = f" ({state.checkpoint.name})" if state.checkpoint is not None else ""
            lines.append(f"  last logged: step {state.logged_step} of {state.max_steps}, loss {state.loss:.4f}{where}")
        lines.append(f"  next run: {'STOPS: ' + step.fix if step.blocking else step.text}")
        for rank, running in lock.holders(stage.output_dir):
            lines.append(f"  in use now by {running.describe()}" + (f" [NODE_RANK {rank}]" if rank else ""))
    lines.append("")
    if any(step.blocking for step in steps):
        lines.append(f"next `{chain.rerun()}`: stops before any training (see STOPS above)")
    elif all(state.kind == "done" for state in states):
        lines.append(f"next `{chain.rerun()}`: nothing to do (every stage is done)")
    else:
        todo = [
            f"stage {s.index + 1}: {step.text}"
            for s, state, step in zip(chain.stages, states, steps)
            if state.kind != "done"
        ]
        lines.append(f"next `{chain.rerun()}`: " + "; ".join(todo))
    return "\n".join(lines)
