"""Running a chain: the lock on every folder it writes, each stage trained (or resumed, or finished without
training), merged when it is a LoRA stage, marked done on node 0 (the other nodes wait for the marker), and a
failure reported with what to do."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_directory, copy_file, remove_stale_temps
from axolotl_dpop.provenance import utc_stamp
from smaug.common.errors import UserError
from smaug.common.paths import rel
from smaug.training import lock, runner
from smaug.training.chains.checks import check_settings, validate_stages
from smaug.training.chains.commands import merge_command, stage_env, tracking_settings, train_command
from smaug.training.chains.inputs import missing_inputs, prepared_folder, stage_inputs
from smaug.training.chains.plan import CHAINS_FILE, STAGE_LOG, Chain, ChainStage, Launch, plan_chain
from smaug.training.chains.progress import (
    NextStep,
    assess_chain,
    assess_stage,
    blocked_error,
    json_settings,
    next_step,
    state_text,
)
from smaug.training.chains.report import describe
from smaug.training.checkpoints import (
    complete_checkpoints,
    set_aside_incomplete_checkpoints,
    weight_files,
    weights_problem,
)
from smaug.training.preflight import preflight
from smaug.training.recipes import write_derived_recipe
from smaug.training.state import (
    StageState,
    new_run_id,
    stage_record,
    write_done_marker,
    write_inputs_record,
)


def _build_tiny_model(target: Path) -> None:
    if (target / "config.json").is_file():
        print(f"prepare: {target} exists, skipped")
        return
    from smaug.training.tiny_model import build_tiny_llama

    atomic_directory(target, build_tiny_llama)  # an empty or broken leftover at target is replaced
    print(f"prepare: wrote tiny Llama to {target}")


def _drop_half_prepared(folder: Path) -> list[Path]:
    """A run killed while axolotl saved its prepared data leaves a folder without dataset_info.json (written
    last); axolotl would try to load it on every rerun and fail. Remove such folders (it is a cache), unless
    another run holds axolotl's own lock on the folder."""
    import shutil

    from filelock import FileLock, Timeout

    if not folder.is_dir():
        return []
    removed = []
    try:
        with FileLock(str(folder / "datasets_prep.lock"), timeout=0):
            for sub in folder.iterdir():
                if sub.is_dir() and not sub.name.startswith(".") and not (sub / "dataset_info.json").is_file():
                    shutil.rmtree(sub)
                    removed.append(sub)
    except Timeout:
        pass
    return removed


def _last_error(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            lines = handle.read().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:300]
    return ""


def run_chain(
    name: str,
    output_root: Path | None = None,
    dry_run: bool = False,
    skip_preflight: bool = False,
    env: dict[str, str] | None = None,
    chains_file: Path = CHAINS_FILE,
) -> int:
    env = dict(os.environ if env is None else env)
    chain = plan_chain(name, output_root, chains_file)
    launch = Launch.from_env(chain.hardware, env)
    check_settings(chain)
    missing = missing_inputs(chain)
    tracking = {stage.index: tracking_settings(chain, stage, env) for stage in chain.stages}
    if dry_run:
        validate_stages(chain, launch, tracking)
        print(describe(chain, launch, tracking))
        for problem in missing:
            print(f"WARNING: {problem} (the run stops here unless it exists by then)")
        print("\nevery stage passes axolotl's own config validation (with the DPOP plugin's); nothing was run")
        return 0
    if missing:
        raise UserError(missing[0])

    states = assess_chain(chain)
    steps = [next_step(chain, stage, state) for stage, state in zip(chain.stages, states)]
    if any(step.blocking for step in steps):
        raise blocked_error(chain, states, steps)
    if all(state.kind == "done" for state in states):
        for stage in chain.stages:
            print(f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: done, skipped ({stage.marker})")
        return 0
    if not skip_preflight:
        preflight(chain, launch)

    folders = [stage.output_dir for stage in chain.stages] + [step["tiny_model"] for step in chain.prepare]
    with lock.hold(folders, launch.node_rank, f"`smaug chain status {chain.name}` shows where it is") as held:
        todo = [stage for stage, state in zip(chain.stages, states) if state.kind != "done"]
        validated = validate_stages(chain, launch, tracking, todo)
        if launch.node_rank == 0:
            for folder in {chain.output_root, *folders, *(f.parent for f in folders)}:
                for leftover in remove_stale_temps(folder):
                    print(f"removed {leftover} (a temp file left by a killed process)")
        for step in chain.prepare:
            _build_tiny_model(step["tiny_model"])
        states = []
        for stage in chain.stages:
            code, skipped = _run_stage(chain, stage, states, launch, tracking.get(stage.index, {}), validated, held)
            if code != 0:
                return code
            states.append(skipped or assess_stage(chain, stage, states))
    return 0


def _run_stage(
    chain: Chain,
    stage: ChainStage,
    earlier: list[StageState],
    launch: Launch,
    tracking: dict[str, Any],
    validated: dict[int, Any],
    held: list[int],
) -> tuple[int, StageState | None]:
    """One stage, under the chain's locks; ``held`` (the lock files' descriptors) is passed on to axolotl, so that
    the locks stay held while it runs even if this process is killed. Returns the exit code, and the stage's
    state when it was done and skipped (nothing changed, so the next stage need not assess it again)."""
    label = f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}"
    state = assess_stage(chain, stage, earlier)  # again, just before it runs: the folder is ours only now
    step = next_step(chain, stage, state)
    if step.blocking:
        raise blocked_error(chain, earlier + [state], [NextStep("")] * len(earlier) + [step])
    if state.kind == "done":
        print(f"{label}: done, skipped ({stage.marker})")
        return 0, state
    if state.kind in ("finished", "weights-missing"):
        return _finish_without_training(chain, stage, state, earlier, launch, validated, label, held), None

    stage.output_dir.mkdir(parents=True, exist_ok=True)
    if launch.node_rank == 0:
        for moved in set_aside_incomplete_checkpoints(stage.output_dir):
            print(f"{label}: set aside a half-written checkpoint as {moved.name}")
    if state.note:
        print(f"{label}: {state.note}")
    resuming = state.kind == "resumable"
    record = state.record if resuming and state.record else None
    if record is None:
        inputs, run_id = stage_inputs(chain, stage, earlier, None), new_run_id()
        prepared = prepared_folder(stage, inputs) or stage.prepared_root / f"run-{run_id}"
        record = stage_record(
            recipe_name=stage.name,
            digest=stage.digest,
            settings=json_settings(stage),
            run_id=run_id,
            inputs=inputs,
            output_dir=stage.output_dir,
            prepared=str(prepared),
        )
        if launch.node_rank == 0:
            write_inputs_record(stage.output_dir, record)
    prepared = Path(record.get("dataset_prepared_path") or stage.prepared_root / f"run-{record.get('run_id')}")
    if launch.node_rank == 0:
        for leftover in _drop_half_prepared(prepared):
            print(f"{label}: removed half-written prepared data {leftover}")
    checkpoints = complete_checkpoints(stage.output_dir)
    print(f"{label}: " + (f"resuming from {checkpoints[-1]}" if checkpoints else "starting"), flush=True)
    if stage.rebased:
        write_derived_recipe(stage.run_config, stage.recipe, stage.recipe_path, f"its paths under {chain.output_root}")
    env_vars = stage_env(stage, tracking)
    log_path = stage_log(stage, launch)
    offset = log_path.stat().st_size if log_path.exists() else 0
    accelerator = chain.hardware.get("accelerator", "cuda")
    overrides = {**tracking, "dataset_prepared_path": rel(prepared)}
    code = runner.run_logged(train_command(stage, launch, accelerator, overrides), env_vars, log_path, pass_fds=held)
    if code == 0 and stage.merge_lora and launch.node_rank == 0:  # one node writes the merged weights
        code = runner.run_logged(merge_command(stage), env_vars, log_path, pass_fds=held)
        if code == 0:
            write_merged_provenance(stage)
    if code != 0:
        _report_failure(chain, stage, state, earlier, code, log_path, offset, label)
        return code, None
    if launch.node_rank == 0:
        write_done_marker(stage.output_dir, record)
    else:
        wait_for_node0(chain, stage, earlier, launch, label)
    print(f"{label}: done ({stage.marker})", flush=True)
    return 0, None


def stage_log(stage: ChainStage, launch: Launch) -> Path:
    """Each node appends to its own log: several nodes writing one file on shared storage would interleave."""
    return stage.output_dir / (STAGE_LOG if launch.node_rank == 0 else f"smaug_stage.node{launch.node_rank}.log")


def write_merged_provenance(stage: ChainStage) -> Path:
    """The merged folder carries the adapter stage's provenance (same lineage and settings), so `smaug release
    card` and a later stage that starts from it can follow the lineage."""
    from axolotl_dpop.provenance import PROVENANCE_FILE, read_provenance, write_provenance

    provenance = read_provenance(stage.output_dir)
    if provenance is None:
        raise UserError(
            f"{stage.output_dir}: no {PROVENANCE_FILE} after training {stage.name}; is "
            "axolotl_dpop.DPOPPlugin listed under `plugins:`?"
        )
    provenance.merged_lora = {"adapter_dir": str(stage.output_dir), "command": "axolotl merge-lora"}
    return write_provenance(stage.output_dir / "merged", provenance)


NODE0_WAIT_ENV = "SMAUG_NODE0_WAIT_S"  # how long other nodes wait for node 0's done-marker (default 6 h)
NODE0_POLL_S = 10.0


def wait_for_node0(
    chain: Chain, stage: ChainStage, earlier: list[StageState], launch: Launch, label: str, wait_s: float | None = None
) -> None:
    """Every node but 0 waits until node 0 has marked the stage done (node 0 may still be saving or merging after
    the distributed run ended) instead of going on to a stage whose input is not there yet."""
    print(f"{label}: finished on node {launch.node_rank}; waiting for node 0 to mark it done", flush=True)
    wait_s = float(os.environ.get(NODE0_WAIT_ENV) or 6 * 3600) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while (state := assess_stage(chain, stage, earlier)).kind != "done":
        if state.kind in ("stale", "unreadable"):
            raise UserError(
                f"{stage.marker}: {state_text(state)}: node 0 and node {launch.node_rank} do not run the "
                "same recipes and inputs; run the same checkout on every node"
            )
        if time.monotonic() >= deadline:
            raise UserError(
                f"node {launch.node_rank}: {stage.name} ended here, but node 0 has not marked it done "
                f"({stage.marker}) after {wait_s:.0f} s; see node 0's log {stage.output_dir / STAGE_LOG} "
                f"({NODE0_WAIT_ENV} sets the wait)"
            )
        time.sleep(NODE0_POLL_S)


def _report_failure(
    chain: Chain,
    stage: ChainStage,
    before: StageState,
    earlier: list[StageState],
    code: int,
    log_path: Path,
    offset: int,
    label: str,
) -> None:
    after = assess_stage(chain, stage, earlier)
    if after.kind == "finished":
        print(
            f"{label}: ended with exit code {code} after training had finished ({after.checkpoint.name}); log: "
            f"{log_path}. Run `{chain.rerun()}` again: it completes the stage without training.",
            file=sys.stderr,
        )
        return
    if after.checkpoint is not None and (before.step is None or (after.step or 0) > before.step):
        print(
            f"{label}: stopped with exit code {code} after saving {after.checkpoint.name}; log: {log_path}. Run "
            f"`{chain.rerun()}` again to resume from there.",
            file=sys.stderr,
        )
        return
    error = _last_error(log_path, offset)
    print(
        f"{label}: failed with exit code {code} before saving a new checkpoint; log: {log_path}"
        + (f"; last error: {error}" if error else "")
        + f". Fix the cause, then run `{chain.rerun()}` again "
        "(done stages are skipped, a stage with checkpoints resumes).",
        file=sys.stderr,
    )


def _finish_without_training(
    chain: Chain,
    stage: ChainStage,
    state: StageState,
    earlier: list[StageState],
    launch: Launch,
    validated: dict[int, Any],
    label: str,
    held: list[int],
) -> int:
    """Training had finished (or a done stage lost its final weights): restore the final weights from the last
    checkpoint and/or merge, and write the marker. Never trains."""
    out = stage.output_dir
    if launch.node_rank != 0:
        print(f"{label}: training had finished; node 0 completes the stage")
        wait_for_node0(chain, stage, earlier, launch, label)
        return 0
    if state.restore_from is not None and state.weights:
        for source in weight_files(state.restore_from):
            copy_file(source, out / source.name)
        problem = weights_problem(out, bool(stage.recipe.get("adapter")))
        if problem:
            raise UserError(
                f"{label}: restoring the final weights from {state.restore_from} failed ({problem}); "
                f"mv {out} {out}.stale-{utc_stamp()} && {chain.rerun()} to retrain"
            )
        print(f"{label}: training had finished at {state.restore_from.name}; copied its weights to {out} (no training)")
    if stage.merge_lora and weights_problem(out / "merged") is not None:
        log_path = out / STAGE_LOG
        code = runner.run_logged(merge_command(stage), stage_env(stage), log_path, pass_fds=held)
        if code != 0:
            print(f"{label}: axolotl merge-lora failed with exit code {code}; log: {log_path}", file=sys.stderr)
            return code
        write_merged_provenance(stage)
    _write_missing_provenance(stage, validated.get(stage.index), launch, state)
    record = state.record
    if record is None or (state.kind == "finished" and not isinstance(record.get("inputs"), dict)):
        inputs = stage_inputs(chain, stage, earlier, None)
        record = stage_record(
            recipe_name=stage.name,
            digest=stage.digest,
            settings=json_settings(stage),
            run_id=(record or {}).get("run_id") or new_run_id(),
            inputs=inputs,
            output_dir=out,
            prepared=(record or {}).get("dataset_prepared_path"),
        )
    if state.kind == "finished":
        write_done_marker(out, record)
        print(
            f"{label}: training had finished at {state.checkpoint.name if state.checkpoint else '?'}; "
            f"marked done without training ({stage.marker})",
            flush=True,
        )
    else:
        print(f"{label}: done ({stage.marker})", flush=True)
    return 0


def _write_missing_provenance(stage: ChainStage, cfg: Any, launch: Launch, state: StageState) -> None:
    """axolotl's post-train hook writes smaug_provenance.json after training; a run killed before it has none."""
    from axolotl_dpop.provenance import PROVENANCE_FILE, training_record, write_provenance

    if cfg is None or (stage.output_dir / PROVENANCE_FILE).is_file():
        return
    record = training_record(cfg, recipe=stage.name, world_size=launch.world_size)
    record["completed_by"] = (
        f"smaug chain: training finished at {state.checkpoint.name if state.checkpoint else '?'}"
        " but the run ended before axolotl's post-train hook; written by the chain"
    )
    write_provenance(stage.output_dir, record)
