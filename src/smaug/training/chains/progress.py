"""The state of every stage (`training.state.assess`, with what it consumed) and what the next run does with
it: the one decision both `smaug chain run` and `smaug chain status` act on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from axolotl_dpop.provenance import utc_stamp
from smaug.common.errors import UserError
from smaug.training.chains.inputs import stage_inputs
from smaug.training.chains.plan import Chain, ChainStage, training_settings
from smaug.training.state import (
    INPUTS_RECORD,
    StageState,
    assess,
)


def assess_chain(chain: Chain) -> list[StageState]:
    states: list[StageState] = []
    for stage in chain.stages:
        states.append(assess_stage(chain, stage, states))
    return states


def assess_stage(chain: Chain, stage: ChainStage, earlier: list[StageState]) -> StageState:
    return assess(
        stage.output_dir,
        stage.digest,
        json_settings(stage),
        lambda previous: stage_inputs(chain, stage, earlier, previous),
        adapter=bool(stage.recipe.get("adapter")),
        merged=stage.merge_lora,
    )


def json_settings(stage: ChainStage) -> dict[str, Any]:
    return json.loads(json.dumps(training_settings(stage.committed or stage.recipe), default=str))


@dataclass
class NextStep:
    text: str  # what the next run does with the stage
    blocking: bool = False  # it stops the run before any training
    fix: str = ""  # what the user can do


def next_step(chain: Chain, stage: ChainStage, state: StageState) -> NextStep:
    out, kind = stage.output_dir, state.kind
    retrain = f"to retrain it: mv {out} {out}.stale-{utc_stamp()} && {chain.rerun()}"
    if kind == "done":
        return NextStep("skip (done)")
    if kind == "stale":
        return NextStep("stop before any training: stale", True, f"{retrain} (or undo the change)")
    if kind == "unreadable":
        if state.bad_file is not None and state.bad_file.name == INPUTS_RECORD:
            return NextStep(
                "stop before any training: unreadable run record",
                True,
                f"delete it (rm {state.bad_file}) and run again: the checkpoints are then taken as "
                f"they are; or {retrain}",
            )
        return NextStep(
            "stop before any training: unreadable done-marker",
            True,
            f"delete it (rm {state.bad_file}) and run again: the chain re-checks the folder from its "
            f"checkpoints (finishing without training if training had finished); or {retrain}",
        )
    if kind in ("weights-missing", "finished"):
        done = "then skip" if kind == "weights-missing" else "then write the done-marker"
        if state.weights is None:
            return NextStep(
                "finish without training: write the done-marker (training had finished at "
                f"{state.checkpoint.name if state.checkpoint else '?'})"
            )
        if state.merge_missing:
            return NextStep(f"run axolotl merge-lora (the merged weights are missing: {state.weights}), {done}")
        if state.restore_from is not None:
            return NextStep(
                f"copy the final weights from {state.restore_from.name} (training had finished "
                f"there; {state.weights}), {done}; no training"
            )
        return NextStep(
            f"stop before any training: the final weights are incomplete ({state.weights})",
            True,
            _weights_fix(chain, stage, state, retrain),
        )
    if kind == "resumable":
        return NextStep(f"resume from {state.checkpoint.name} (step {state.step} of {state.max_steps})")
    if kind == "occupied":
        return NextStep(
            "stop before any training: the folder holds a model",
            True,
            f"move it aside to train this stage there: mv {out} {out}.old-{utc_stamp()} && {chain.rerun()}",
        )
    return NextStep("train from the start")


def _weights_fix(chain: Chain, stage: ChainStage, state: StageState, retrain: str) -> str:
    ck, out = state.checkpoint, stage.output_dir
    if ck is not None and (ck / "zero_to_fp32.py").is_file():
        return (
            f"its last checkpoint holds DeepSpeed shards only: write the weights with "
            f"`python {ck}/zero_to_fp32.py {ck} {out} --safe_serialization`, then {chain.rerun()}; or {retrain}"
        )
    if ck is not None and any(ck.glob("pytorch_model_fsdp*")):
        return (
            f"its last checkpoint holds FSDP shards only: merge them into {out} with axolotl's "
            f"`merge-sharded-fsdp-weights`, then {chain.rerun()}; or {retrain}"
        )
    if stage.recipe.get("load_best_model_at_end"):
        return (
            f"with load_best_model_at_end the final model is the best checkpoint: copy its weights into {out}, "
            f"then {chain.rerun()}; or {retrain}"
        )
    if ck is None:
        return f"no checkpoint is left to restore them from: put the weights back into {out}, or {retrain}"
    return f"training did not finish at {ck.name}: put the weights back into {out}, or {retrain}"


def state_text(state: StageState) -> str:
    kind = state.kind
    if kind == "done":
        text = "done"
    elif kind == "stale":
        text = f"stale: {state.detail}"
    elif kind == "unreadable":
        text = f"unreadable: {state.detail}"
    elif kind == "weights-missing":
        text = f"done, but the final weights are incomplete: {state.weights}"
    elif kind == "finished":
        text = f"finished at {state.checkpoint.name if state.checkpoint else '?'} but not marked done"
        text += f" (final weights: {state.weights})" if state.weights else " (final weights complete)"
    elif kind == "resumable":
        text = f"resumable from {state.checkpoint.name if state.checkpoint else '?'}"
    elif kind == "occupied":
        text = f"occupied: {state.detail}"
    else:
        text = "not started"
    return text + (f" [{state.note}]" if state.note else "")


def blocked_error(chain: Chain, states: list[StageState], steps: list[NextStep]) -> UserError:
    lines = [
        f"{stage.name} (stage {stage.index + 1} of chain {chain.name!r}, {stage.output_dir}) is "
        f"{state_text(state)}; {step.fix}"
        for stage, state, step in zip(chain.stages, states, steps)
        if step.blocking
    ]
    return UserError("\n".join(lines) + "\nNothing was trained.")
