"""What `--dry-run` and `smaug chain status` print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smaug.common.paths import REPO_ROOT, rel
from smaug.training import lock, memory, runner, template_tokens
from smaug.training.chains.commands import merge_command, train_command
from smaug.training.chains.inputs import assess_chain, prepared_folder, stage_inputs
from smaug.training.chains.plan import Chain, ChainStage, Launch
from smaug.training.chains.preflight import hardware_text
from smaug.training.state import Action, Kind, StageState

_PENDING = "inputs-PENDING"
_SHOWN = ("rl_beta", "dpop_lambda", "slic_lambda", "learning_rate", "optimizer", "max_steps", "micro_batch_size")
_SHOWN += ("gradient_accumulation_steps", "sequence_len")


def host_ram_check(hardware: dict[str, Any], est: memory.Estimate) -> list[str]:
    """The estimate's host RAM per node next to what recipes/chains.yaml states for the chain."""
    need_gb, stated = est.host_gib * memory.GIB / 1e9, hardware.get("host_ram_gb")
    if stated is None:
        verdict = "recipes/chains.yaml states no host_ram_gb for this chain: add it"
    elif need_gb <= float(stated):
        verdict = f"recipes/chains.yaml states {stated:g} GB: ok"
    else:
        verdict = f"MORE than the {stated:g} GB recipes/chains.yaml states: correct host_ram_gb there"
    lines = [
        f"    host RAM per node for offloaded states (estimate): {need_gb:.0f} GB ({est.host_gib:.0f} GiB); {verdict}"
    ]
    return lines + [f"      {what:<76s} {gib * memory.GIB / 1e9:7.0f} GB" for what, gib in est.host_rows]


def _memory_lines(chain: Chain, stage: ChainStage, launch: Launch, shape: memory.ModelShape | None) -> list[str]:
    if shape is None:
        return ["  GPU memory: no estimate (base model not in the known table and no local config.json)"]
    est = memory.estimate(stage.recipe, shape, launch.world_size, launch.num_gpus, REPO_ROOT)
    budget = chain.hardware.get("min_gpu_memory_gib")
    verdict = (
        ("  -> fits" if est.total_gib <= float(budget) else f"  -> does NOT fit in {budget} GiB") if budget else ""
    )
    lines = ["  GPU memory per device (estimate):", *(f"    {what:<78s} {gib:7.1f} GiB" for what, gib in est.rows)]
    lines.append(
        f"    {'total (+ allocator/NCCL overhead, typically a few GiB)':<78s} {est.total_gib:7.1f} GiB{verdict}"
    )
    lines += host_ram_check(chain.hardware, est) if est.host_gib else []
    lines.append("    assumptions: " + "; ".join(est.assumptions))
    if chain.hardware.get("accelerator") == "cuda":
        lines.append("  " + memory.projected_cost(stage.recipe, chain.hardware, shape).line())
    return lines


def describe(
    chain: Chain,
    launch: Launch,
    tracking: dict[int, dict[str, Any]] | None = None,
    states: list[StageState] | None = None,
) -> str:
    tracking, states, hw = tracking or {}, states or assess_chain(chain), chain.hardware
    cuda = hw.get("accelerator") == "cuda"
    lines = [
        f"chain {chain.name}: {chain.description}",
        f"hardware: {hardware_text(hw)}"
        + (f" ({hw.get('gpus')} GPUs in total, >= {hw.get('min_gpu_memory_gib')} GiB each)" if cuda else ""),
        f"launch: NUM_GPUS={launch.num_gpus} NNODES={launch.nnodes} NODE_RANK={launch.node_rank} "
        f"MASTER_ADDR={launch.master_addr} MASTER_PORT={launch.master_port} (world size {launch.world_size})",
        f"output root: {chain.output_root}",
    ]
    if cuda and launch.world_size != int(hw.get("gpus") or 1):
        lines.append(
            f"WARNING: NUM_GPUS x NNODES = {launch.world_size}, but the recipes are sized for {hw.get('gpus')} GPUs "
            "in total (the run's preflight stops on fewer)"
        )
    for model in chain.prepare:
        exists = "  [exists, skipped]" if (model / "config.json").is_file() else ""
        lines.append(f"prepare: smaug showcase tiny-model {model}{exists}")
    shapes: dict[Path, memory.ModelShape | None] = {}
    for stage, state in zip(chain.stages, states):
        recipe = stage.recipe
        kind = (recipe.get("rl") or "sft") + (
            f" ({', '.join(recipe['dpo_loss_type'])})" if recipe.get("dpo_loss_type") else ""
        )
        kind += f", {recipe['adapter']}" if recipe.get("adapter") else ""
        lines += [
            "",
            f"stage {stage.index + 1}/{len(chain.stages)}: {stage.name}  [{kind}]  ({state.text}: {state.plan})",
            f"  base_model: {recipe['base_model']}",
            f"  output_dir: {stage.output_dir}",
            f"  settings: {', '.join(f'{k}={recipe[k]}' for k in _SHOWN if recipe.get(k) is not None)}",
            *template_tokens.dry_run_lines(recipe, where=stage.where(chain.name)),
        ]
        if stage.rebased:
            lines.append(f"  config: {stage.run_config} (the recipe with paths under {chain.output_root})")
        prepared = _planned_prepared(chain, stage, state, states)
        command = train_command(
            stage,
            launch,
            hw.get("accelerator", "cuda"),
            {**tracking.get(stage.index, {}), "dataset_prepared_path": prepared},
        )
        lines.append(f"  command: {runner.display(command)}")
        if prepared.endswith(_PENDING):
            lines.append(
                f"  ({_PENDING}: inputs-<digest of its data files and base>, known once the stage it starts from has run)"
            )
        if stage.merge_lora:
            lines.append(
                f"  then:    {runner.display(merge_command(stage))}" + ("   (node 0 only)" if launch.nnodes > 1 else "")
            )
        shape = memory.model_shape(str(recipe["base_model"]), shapes.get(stage.base_path) if stage.base_path else None)
        shapes[stage.output_dir] = shapes[stage.output_dir / "merged"] = shape
        lines += _memory_lines(chain, stage, launch, shape)
    return "\n".join(lines)


def _planned_prepared(chain: Chain, stage: ChainStage, state: StageState, states: list[StageState]) -> str:
    if state.kind is Kind.RESUMABLE and state.record and state.record.dataset_prepared_path:
        return rel(state.record.dataset_prepared_path)
    try:
        # with the recorded inputs, unchanged files are known from their stat (assess just hashed them)
        folder = prepared_folder(
            stage, stage_inputs(chain, stage, states[: stage.index], state.record and state.record.inputs)
        )
    except OSError:
        folder = None
    return rel(folder) if folder else rel(stage.prepared_root) + "/" + _PENDING


def status_report(chain: Chain) -> str:
    """`smaug chain status`: each stage's state, folder, last logged step and loss, and what the next run does.
    Files only: no model, no axolotl, no GPU, no network."""
    states = assess_chain(chain)
    lines = [f"chain {chain.name}: {chain.description}", f"output root: {chain.output_root}"]
    for stage, state in zip(chain.stages, states):
        lines += [
            "",
            f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: {state.text}",
            f"  output: {stage.output_dir}",
        ]
        step, loss = state.trainer.last_logged() if state.trainer else (None, None)
        if step is not None:
            lines.append(
                f"  last logged: step {step} of {state.trainer.max_steps}, loss {loss:.4f} ({state.checkpoint.name})"
            )
        lines.append(f"  next run: {state.plan}")
        for rank, running in lock.holders(stage.output_dir):
            lines.append(
                f"  in use now by {running.describe(lock.lock_path(stage.output_dir, rank))}"
                + (f" [NODE_RANK {rank}]" if rank else "")
            )
    todo = [
        f"stage {s.index + 1}: {state.next}"
        for s, state in zip(chain.stages, states)
        if state.action is not Action.SKIP
    ]
    if any(state.action is Action.STOP for state in states):
        todo = ["stops before any training (see STOPS above)"]
    return "\n".join(
        [*lines, "", f"next `{chain.rerun()}`: " + ("; ".join(todo) or "nothing to do (every stage is done)")]
    )
