"""Running a chain: locks, each stage trained, resumed or completed without training, merged, marked done."""

from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_directory, copy_file, remove_stale_temps
from axolotl_dpop.provenance import PROVENANCE_FILE, read_provenance, training_record, utc_stamp, write_provenance
from smaug.common.errors import UserError
from smaug.common.paths import rel
from smaug.training import lock, runner
from smaug.training.chains.checks import check_settings, validate_stages
from smaug.training.chains.commands import merge_command, stage_env, tracking_settings, train_command
from smaug.training.chains.inputs import assess_chain, assess_stage, missing_inputs, new_record, prepared_folder
from smaug.training.chains.plan import CHAINS_FILE, STAGE_LOG, Chain, ChainStage, Launch, plan_chain
from smaug.training.chains.preflight import preflight
from smaug.training.chains.report import describe
from smaug.training.checkpoints import (
    complete_checkpoints,
    model_files,
    model_problem,
    set_aside_incomplete_checkpoints,
)
from smaug.training.recipes import write_derived_recipe
from smaug.training.state import Action, Kind, StageState

NODE0_POLL_S = 10.0


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
    if any(state.action is Action.STOP for state in states):
        raise blocked_error(chain, list(zip(chain.stages, states)))
    if all(state.action is Action.SKIP for state in states):
        for stage in chain.stages:
            print(f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: done, skipped ({stage.marker})")
        return 0
    if not skip_preflight:
        preflight(chain, launch)
    folders = [stage.output_dir for stage in chain.stages] + chain.prepare
    with lock.hold(folders, launch.node_rank, f"`smaug chain status {chain.name}` shows where it is") as held:
        todo = [stage for stage, state in zip(chain.stages, states) if state.action is not Action.SKIP]
        run = _Run(chain, launch, tracking, validate_stages(chain, launch, tracking, todo), held)
        if launch.node_rank == 0:
            for folder in {chain.output_root, *folders, *(f.parent for f in folders)}:
                for leftover in remove_stale_temps(folder):
                    print(f"removed {leftover} (a temp file left by a killed process)")
        for model in chain.prepare:
            if (model / "config.json").is_file():
                print(f"prepare: {model} exists, skipped")
            else:  # an empty or broken leftover there is replaced
                from smaug.training.tiny_model import build_tiny_llama

                print(f"prepare: wrote tiny Llama to {atomic_directory(model, build_tiny_llama)}")
        for stage in chain.stages:
            code = run.stage(stage)
            if code != 0:
                return code
    return 0


def blocked_error(chain: Chain, blocked: list[tuple[ChainStage, StageState]]) -> UserError:
    lines = [
        f"{stage.name} (stage {stage.index + 1} of chain {chain.name!r}, {stage.output_dir}) is {state.text}; {state.next}"
        for stage, state in blocked
        if state.action is Action.STOP
    ]
    return UserError("\n".join(lines) + "\nNothing was trained.")


@dataclass
class _Run:
    chain: Chain
    launch: Launch
    tracking: dict[int, dict[str, Any]]
    validated: dict[int, Any]  # axolotl's validated config of every stage to run
    held: list[int] = field(default_factory=list)  # the locks' descriptors, passed on to what the chain starts
    done: list[StageState] = field(default_factory=list)  # the states of the stages gone through

    def stage(self, stage: ChainStage) -> int:
        """Run one stage (axolotl inherits the locks, so the folders stay locked while it runs even if this process
        is killed); its exit code."""
        chain, earlier = self.chain, self.done
        label = f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}"
        state = assess_stage(chain, stage, earlier)  # again, just before it runs: the folder is ours only now
        if state.action is Action.STOP:
            raise blocked_error(chain, [(stage, state)])
        if state.action is Action.SKIP:
            print(f"{label}: done, skipped ({stage.marker})")
            self.done.append(state)
            return 0
        if state.action is Action.FINISH:
            code = self._finish(stage, state, label)
        else:
            code = self._train(stage, state, label)
        if code == 0:
            self.done.append(assess_stage(chain, stage, earlier))
        return code

    def _train(self, stage: ChainStage, state: StageState, label: str) -> int:
        chain, launch, out, node0 = self.chain, self.launch, stage.output_dir, self.launch.node_rank == 0
        out.mkdir(parents=True, exist_ok=True)
        record = state.record
        if record is None:
            record = new_record(chain, stage, self.done)
            inputs_folder = prepared_folder(stage, record.inputs) or stage.prepared_root / f"run-{record.run_id}"
            record.dataset_prepared_path = str(inputs_folder)
            if node0:
                record.write(out)
        prepared = Path(record.dataset_prepared_path or stage.prepared_root / f"run-{record.run_id}")
        if node0:
            for moved in set_aside_incomplete_checkpoints(out):
                print(f"{label}: set aside a half-written checkpoint as {moved.name}")
            for leftover in _drop_half_prepared(prepared) if prepared.is_dir() else []:
                print(f"{label}: removed half-written prepared data {leftover}")
        checkpoints = complete_checkpoints(out)
        print(f"{label}: " + (f"resuming from {checkpoints[-1]}" if checkpoints else "starting"), flush=True)
        if stage.rebased:
            write_derived_recipe(stage.run_config, stage.recipe, stage.recipe_path, f"paths under {chain.output_root}")
        tracking = self.tracking[stage.index]
        # each node appends to its own log: several nodes writing one file on shared storage would interleave
        log = out / (STAGE_LOG if node0 else f"smaug_stage.node{launch.node_rank}.log")
        env = stage_env(stage, tracking)
        offset = log.stat().st_size if log.exists() else 0
        overrides = {**tracking, "dataset_prepared_path": rel(prepared)}
        command = train_command(stage, launch, chain.hardware.get("accelerator", "cuda"), overrides)
        code = runner.run_logged(command, env, log, pass_fds=self.held)
        if code == 0 and stage.merge_lora and node0:  # one node writes the merged weights
            code = self._merge(stage, env, log)
        if code != 0:
            print(f"{label}: {_failure(chain, stage, state, self.done, code, log, offset)}", file=sys.stderr)
            return code
        if node0:
            record.write(out, done=True)
        else:
            wait_for_node0(chain, stage, self.done, launch, label)
        print(f"{label}: done ({stage.marker})", flush=True)
        return 0

    def _finish(self, stage: ChainStage, state: StageState, label: str) -> int:
        """Training had finished (or a done stage lost its final weights): restore them from the last checkpoint
        and/or merge, write what is missing and the marker. Never trains."""
        out, launch = stage.output_dir, self.launch
        if launch.node_rank != 0:
            print(f"{label}: training had finished; node 0 completes the stage")
            wait_for_node0(self.chain, stage, self.done, launch, label)
            return 0
        if state.restore_from is not None:
            for source in model_files(state.restore_from):
                copy_file(source, out / source.name)
            problem = model_problem(out, stage.merge_lora)
            if problem:
                raise UserError(
                    f"{label}: restoring the final weights from {state.restore_from} failed ({problem}); "
                    f"mv {out} {out}.stale-{utc_stamp()} && {self.chain.rerun()} to retrain"
                )
            print(f"{label}: training had finished at {state.restore_from.name}; copied its weights (no training)")
        if stage.merge_lora and model_problem(out / "merged") is not None:
            code = self._merge(stage, stage_env(stage), out / STAGE_LOG)
            if code != 0:
                print(f"{label}: axolotl merge-lora failed (exit code {code}); log: {out / STAGE_LOG}", file=sys.stderr)
                return code
        cfg = self.validated.get(stage.index)
        if cfg is not None and not (out / PROVENANCE_FILE).is_file():  # killed before axolotl's post-train hook
            provenance = training_record(cfg, recipe=stage.name, world_size=launch.world_size)
            provenance["completed_by"] = (
                f"smaug chain: training finished at {state.checkpoint.name if state.checkpoint else '?'} but the run "
                "ended before axolotl's post-train hook; written by the chain"
            )
            write_provenance(out, provenance)
        if state.kind is Kind.FINISHED:
            (state.record or new_record(self.chain, stage, self.done)).write(out, done=True)
            print(f"{label}: training had finished at {state.checkpoint.name}; marked done without training")
        else:
            print(f"{label}: done ({stage.marker})", flush=True)
        return 0

    def _merge(self, stage: ChainStage, env: dict[str, str], log: Path) -> int:
        """`axolotl merge-lora` into a staging folder moved into place, with its provenance, once whole: a merge
        killed midway leaves no `merged` folder to be taken for done."""
        staging, merged = stage.output_dir / ".merging", stage.output_dir / "merged"
        shutil.rmtree(staging, ignore_errors=True)
        code = runner.run_logged(merge_command(stage, staging), env, log, pass_fds=self.held)
        if code == 0:
            problem = model_problem(staging / "merged")
            if problem:
                raise UserError(f"{stage.name}: axolotl merge-lora ended without a whole model ({problem}); log: {log}")
            # the merged model carries the adapter stage's provenance, so its lineage can be followed
            provenance = read_provenance(stage.output_dir)
            if provenance is None:
                raise UserError(
                    f"{stage.output_dir}: no {PROVENANCE_FILE}; is axolotl_dpop.DPOPPlugin under `plugins:`?"
                )
            provenance.merged_lora = {"adapter_dir": str(stage.output_dir), "command": "axolotl merge-lora"}
            write_provenance(staging / "merged", provenance)
            shutil.rmtree(merged, ignore_errors=True)
            os.replace(staging / "merged", merged)
            shutil.rmtree(staging)  # what else axolotl wrote there (its debug.log)
        return code


def wait_for_node0(chain: Chain, stage: ChainStage, earlier: list[StageState], launch: Launch, label: str) -> None:
    """Every node but 0 waits until node 0 has marked the stage done (it may still be saving or merging after the
    distributed run ended) instead of going on to a stage whose input is not there yet."""
    print(f"{label}: finished on node {launch.node_rank}; waiting for node 0 to mark it done", flush=True)
    deadline = time.monotonic() + launch.node0_wait_s
    while (state := assess_stage(chain, stage, earlier)).kind is not Kind.DONE:
        if state.kind in (Kind.STALE, Kind.UNREADABLE):
            raise UserError(
                f"{stage.marker}: {state.text}: node 0 and node {launch.node_rank} do not run the same recipes and "
                "inputs; run the same checkout on every node"
            )
        if time.monotonic() >= deadline:
            raise UserError(
                f"node {launch.node_rank}: {stage.name} ended here, but node 0 has not marked it done ({stage.marker}) "
                f"after {launch.node0_wait_s:g} s; see node 0's log {stage.output_dir / STAGE_LOG} "
                "(SMAUG_NODE0_WAIT_S sets the wait)"
            )
        time.sleep(NODE0_POLL_S)


def _failure(
    chain: Chain, stage: ChainStage, before: StageState, earlier: list[StageState], code: int, log: Path, offset: int
) -> str:
    """What went wrong with a run of ``stage`` that ended with ``code``, and what to do."""
    after, rerun = assess_stage(chain, stage, earlier), chain.rerun()
    if after.kind is Kind.FINISHED:
        return (
            f"ended with exit code {code} after training had finished ({after.checkpoint.name}); log: {log}. "
            f"Run `{rerun}` again: it completes the stage without training."
        )
    if after.trainer and after.trainer.global_step > (before.trainer.global_step if before.trainer else -1):
        return (
            f"stopped with exit code {code} after saving {after.checkpoint.name}; log: {log}. "
            f"Run `{rerun}` again to resume from there."
        )
    lines = []
    with suppress(OSError), open(log, encoding="utf-8", errors="replace") as handle:
        handle.seek(offset)
        lines = handle.read().splitlines()
    error = next((line.strip()[:300] for line in reversed(lines) if "Error" in line or "Exception" in line), "")
    return (
        f"failed with exit code {code} before saving a new checkpoint; log: {log}"
        + (f"; last error: {error}" if error else "")
        + f". Fix the cause, then run `{rerun}` again (done stages are skipped, a stage with checkpoints resumes)."
    )


def _drop_half_prepared(folder: Path) -> list[Path]:
    """A run killed while axolotl saved its prepared data leaves a folder without dataset_info.json (written last);
    axolotl would fail to load it on every rerun. Remove such folders (a cache), unless another run holds
    axolotl's own lock on the folder."""
    from filelock import FileLock, Timeout

    removed = []
    with suppress(Timeout), FileLock(str(folder / "datasets_prep.lock"), timeout=0):
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.name.startswith(".") and not (sub / "dataset_info.json").is_file():
                shutil.rmtree(sub)
                removed.append(sub)
    return removed
