"""What a stage's folder says about the stage, and what the next chain run does with it: `assess`, for both
`smaug chain run` and `smaug chain status`. Files only: no model, no GPU."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from axolotl_dpop.atomic import write_json
from axolotl_dpop.provenance import utc_stamp
from smaug.training.checkpoints import TrainerState, complete_checkpoints, model_problem, trainer_state

DONE_MARKER = ".smaug_stage_done"
INPUTS_RECORD = ".smaug_stage_inputs"


def recipe_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def new_run_id() -> str:
    return utc_stamp() + "-" + secrets.token_hex(3)


class Fingerprint(BaseModel):
    sha256: str
    # size, mtime, ctime (ns) and inode: a copy that keeps size and mtime (cp -p, rsync -a) gets a new ctime
    # and inode, so its contents are hashed again
    stat: tuple[int, int, int, int]


class Inputs(BaseModel):
    """What a stage consumed: its base model (a stage of the chain and its run, a Hub id and revision, or a local
    folder whose files are among ``files``) and the content of every local file it read."""

    base: str
    files: dict[str, Fingerprint]

    def changes(self, now: Inputs) -> list[str]:
        found = [f"its base model changed ({self.base} -> {now.base})"] if self.base != now.base else []
        for label in sorted(self.files.keys() | now.files.keys()):
            old, new = self.files.get(label), now.files.get(label)
            if old is None:
                found.append(f"{label} is read now but was not then")
            elif new is None:
                found.append(f"{label} is no longer read (or is gone)")
            elif old.sha256 != new.sha256:
                found.append(f"{label} changed (sha256 {old.sha256[:12]} -> {new.sha256[:12]})")
        return found


class StageRecord(BaseModel):
    recipe: str
    sha256: str  # the recipe's hash (tracking keys left out)
    settings: dict[str, Any]
    inputs: Inputs
    output_dir: str
    dataset_prepared_path: str | None = None
    run_id: str = Field(default_factory=new_run_id)
    started_at: str = Field(default_factory=utc_stamp)
    finished_at: str | None = None

    def write(self, output_dir: Path, done: bool = False) -> Path:
        record = self.model_copy(update={"finished_at": utc_stamp()}) if done else self
        return write_json(output_dir / (DONE_MARKER if done else INPUTS_RECORD), record.model_dump(mode="json"))


def read_record(path: Path) -> tuple[StageRecord | None, str | None]:
    """(record, None); (None, None) when there is none; (None, what is wrong with it)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    if not data.strip():
        return None, "is empty"
    try:
        return StageRecord.model_validate_json(data), None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return None, f"is not a stage record ({where + ': ' if where else ''}{first['msg']})"


def _settings_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    def short(value: Any) -> str:
        text = "unset" if value is None else json.dumps(value, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))
    shown = [f"{k}: {short(recorded.get(k))} -> {short(current.get(k))}" for k in keys[:5]]
    shown += [f"and {len(keys) - 5} more"] if len(keys) > 5 else []
    return [f"recipe changed ({'; '.join(shown)})" if shown else "the recipe changed"]


class Kind(Enum):
    """Where a stage stands. A run moves it NEW -> RESUMABLE -> FINISHED -> DONE (training, then the marker);
    FINISHED and WEIGHTS_MISSING are completed without training; STALE, UNREADABLE and OCCUPIED stop the run."""

    NEW = "not started"
    RESUMABLE = "resumable"
    FINISHED = "finished, not marked done"
    DONE = "done"
    WEIGHTS_MISSING = "done, final weights incomplete"
    STALE = "stale"
    UNREADABLE = "unreadable"
    OCCUPIED = "occupied"


class Action(Enum):
    TRAIN = "train"  # start or resume `axolotl train`
    FINISH = "finish"  # restore the final weights and/or merge, then mark done: no training
    SKIP = "skip"
    STOP = "stop"  # stop before any training, with what to do


@dataclass
class StageState:
    kind: Kind
    action: Action
    text: str  # where the stage stands, in words
    next: str  # what the next run does (with STOP: what the user can do)
    checkpoint: Path | None = None  # the last complete checkpoint
    trainer: TrainerState | None = None  # its trainer state
    record: StageRecord | None = None  # the marker or run record behind this state
    restore_from: Path | None = None  # a checkpoint holding the final weights

    @property
    def run_id(self) -> str | None:
        return self.record.run_id if self.record else None

    @property
    def reusable(self) -> bool:
        """Its outputs stand (a later stage may start from them) once the next run completes it."""
        return self.kind in (Kind.DONE, Kind.WEIGHTS_MISSING, Kind.FINISHED)

    @property
    def plan(self) -> str:
        return f"STOPS: {self.next}" if self.action is Action.STOP else self.next


def assess(
    out: Path,
    digest: str,
    settings: dict[str, Any],
    inputs_now: Callable[[Inputs | None], Inputs],
    *,
    rerun: str,
    adapter: bool = False,
    merged: bool = False,
) -> StageState:
    """The state of one stage folder and the next step. ``inputs_now(recorded)`` gives what the stage would consume
    now (unchanged files are not hashed again); ``rerun`` is the command that runs the chain again."""
    checkpoints = complete_checkpoints(out) if out.is_dir() else []
    last = checkpoints[-1] if checkpoints else None
    trainer = trainer_state(last) if last else None
    retrain = f"to retrain it: mv {out} {out}.stale-{utc_stamp()} && {rerun}"
    record = None

    def state(kind: Kind, action: Action, text: str, next_step: str, restore_from: Path | None = None) -> StageState:
        return StageState(kind, action, text, next_step, last, trainer, record, restore_from)

    marker, problem = read_record(out / DONE_MARKER)
    if problem:
        return state(
            Kind.UNREADABLE,
            Action.STOP,
            f"unreadable: its done-marker {out / DONE_MARKER} {problem}",
            f"delete it (rm {out / DONE_MARKER}) and run again: the chain re-checks the folder from its checkpoints "
            f"(finishing without training if training had finished); or {retrain}",
        )
    if marker is None and last is None:
        if out.is_dir() and any(p.name.startswith(("model", "pytorch_model", "adapter_model")) for p in out.iterdir()):
            why = "no done-marker and no checkpoints (not written by a run of this stage, or its records were deleted)"
            aside = f"move it aside to train this stage there: mv {out} {out}.old-{utc_stamp()} && {rerun}"
            return state(Kind.OCCUPIED, Action.STOP, f"occupied: it holds model weights but {why}", aside)
        return state(Kind.NEW, Action.TRAIN, "not started", "train from the start")
    record, problem = (marker, None) if marker else read_record(out / INPUTS_RECORD)
    if problem:
        return state(
            Kind.UNREADABLE,
            Action.STOP,
            f"unreadable: its run record {out / INPUTS_RECORD} {problem}",
            f"delete it (rm {out / INPUTS_RECORD}) and run again: the checkpoints are then taken as they are; "
            f"or {retrain}",
        )
    if record is not None:
        changes = [] if record.sha256 == digest else _settings_changes(record.settings, settings)
        changes += record.inputs.changes(inputs_now(record.inputs))
        if changes:
            what = "" if marker else "the checkpoints were written with other inputs: "
            return state(
                Kind.STALE, Action.STOP, f"stale: {what}{'; '.join(changes)}", f"{retrain} (or undo the change)"
            )
    if marker is None and not trainer.finished:
        note = "" if record else " [checkpoints written without a run record: taken as they are]"
        resume = f"resume from {last.name} (step {trainer.global_step} of {trainer.max_steps})"
        return state(Kind.RESUMABLE, Action.TRAIN, f"resumable from {last.name}{note}", resume)

    # Done, or training had finished: are the final model and, for a LoRA stage, the merged model whole?
    problem = model_problem(out, adapter)
    merge = merged and problem is None and (problem := model_problem(out / "merged")) is not None
    problem = f"merged/{problem}" if merge else problem
    then = "then skip" if marker else "then write the done-marker"
    if problem is None and marker:
        return state(Kind.DONE, Action.SKIP, "done", "skip (done)")
    if problem is None:
        text = f"finished at {last.name} but not marked done (final weights complete)"
        return state(
            Kind.FINISHED,
            Action.FINISH,
            text,
            f"finish without training: write the done-marker (training had finished at {last.name})",
        )
    kind = Kind.WEIGHTS_MISSING if marker else Kind.FINISHED
    text = (
        f"done, but the final weights are incomplete: {problem}"
        if marker
        else f"finished at {last.name} but not marked done (final weights: {problem})"
    )
    if merge:
        return state(kind, Action.FINISH, text, f"run axolotl merge-lora ({problem}), {then}")
    # with load_best_model_at_end the final model is the best checkpoint, not the last
    if trainer and trainer.finished and not settings.get("load_best_model_at_end") and not model_problem(last, adapter):
        copy = f"copy the final weights from {last.name} (training had finished there; {problem}), {then}; no training"
        return state(kind, Action.FINISH, text, copy, restore_from=last)
    return state(kind, Action.STOP, text, _weights_fix(out, last, settings, rerun) + f"; or {retrain}")


def _weights_fix(out: Path, last: Path | None, settings: dict[str, Any], rerun: str) -> str:
    if last is not None and (last / "zero_to_fp32.py").is_file():
        command = f"python {last}/zero_to_fp32.py {last} {out} --safe_serialization"
        return f"its last checkpoint holds DeepSpeed shards only: write the weights with `{command}`, then {rerun}"
    if last is not None and any(last.glob("pytorch_model_fsdp*")):
        how = f"merge them into {out} with axolotl's `merge-sharded-fsdp-weights`"
        return f"its last checkpoint holds FSDP shards only: {how}, then {rerun}"
    if settings.get("load_best_model_at_end"):
        return f"with load_best_model_at_end the final model is the best checkpoint: copy its weights into {out}, then {rerun}"
    if last is None:
        return f"no checkpoint is left to restore them from: put the weights back into {out}"
    return f"training did not finish at {last.name}: put the weights back into {out}"
