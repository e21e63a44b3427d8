"""What a stage's output folder says about it, decided in one place: `assess` (the chain's run and
`smaug chain status` both use it). It reads files only: no model, no axolotl, no GPU.

The chain keeps two small JSON records in a stage folder:
  `.smaug_stage_inputs`  written when a run of the stage starts: its run id, the recipe's hash and settings, and
                         what it consumes (the base stage's run id, or a local base folder's files; the content
                         hashes of the local files it reads: data, chat templates, DeepSpeed JSON);
  `.smaug_stage_done`    the done-marker: the same record, plus when the run finished.
A later stage records its base stage's run id, so retraining the base makes it "stale: upstream changed".

States: `done`; `stale` (recipe or inputs changed since the marker or the checkpoints were written);
`unreadable` (a record that is empty, not JSON, binary…); `weights-missing` (done, but the final weights are
gone or truncated); `finished` (the last checkpoint is at max_steps but there is no marker: a kill after
training, before the marker); `resumable` (complete `checkpoint-N` folders); `occupied` (a model there,
but nothing says this stage wrote it: never trained over); `new`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_json
from axolotl_dpop.provenance import utc_stamp
from smaug.training.checkpoints import (
    complete_checkpoints,
    finished_training,
    last_logged,
    read_trainer_state,
    weights_problem,
)

DONE_MARKER = ".smaug_stage_done"
INPUTS_RECORD = ".smaug_stage_inputs"
RECORD_SCHEMA = 2
# Files of a model folder that are not the model: left out of a local base folder's fingerprint.
_NOT_MODEL_FILES = {
    "smaug_provenance.json",
    "README.md",
    "training_args.bin",
    "smaug_stage.log",
    "smaug_stage_config.yml",
    "debug.log",
}


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Hash of the settings (not the comments): a done stage whose recipe changed is not silently reused."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def new_run_id() -> str:
    return utc_stamp() + "-" + secrets.token_hex(3)


# --------------------------------------------------------------------------------------------------------------
# records


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None), (None, None) when there is no file, or (None, what is wrong with it)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    if not data.strip():
        return None, "is empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "is binary, not JSON text"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"is not valid JSON ({err.msg} at line {err.lineno})"
    if not isinstance(record, dict):
        return None, f"holds a JSON {type(record).__name__}, not an object"
    if not isinstance(record.get("sha256"), str):
        return None, "has no recipe hash (`sha256`)"
    problem = _inputs_problem(record.get("inputs"))
    if problem:
        return None, f"has a malformed `inputs` ({problem})"
    if record.get("run_id") is not None and not isinstance(record["run_id"], str):
        return None, "has a malformed `run_id`"
    return record, None


def _inputs_problem(inputs: Any) -> str | None:
    if inputs is None:
        return None  # written by an older smaug: no inputs recorded
    if not isinstance(inputs, dict):
        return f"a JSON {type(inputs).__name__}, not an object"
    files, base = inputs.get("files", {}), inputs.get("base", {})
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return "`files` must map paths to hashes"
    if (
        not isinstance(base, dict)
        or base.get("files") is not None
        and not (isinstance(base["files"], dict) and all(isinstance(v, dict) for v in base["files"].values()))
    ):
        return "`base` must be an object"
    return None


def stage_record(
    *,
    recipe_name: str,
    digest: str,
    settings: dict[str, Any],
    run_id: str,
    inputs: dict[str, Any],
    output_dir: Path,
    prepared: str | None,
    started_at: str | None = None,
) -> dict[str, Any]:
    return {
        "schema": RECORD_SCHEMA,
        "recipe": recipe_name,
        "sha256": digest,
        "run_id": run_id,
        "output_dir": str(output_dir),
        "started_at": started_at or utc_stamp(),
        "dataset_prepared_path": prepared,
        "inputs": inputs,
        "settings": settings,
    }


def write_inputs_record(output_dir: Path, record: dict[str, Any]) -> Path:
    return write_json(output_dir / INPUTS_RECORD, record)


def write_done_marker(output_dir: Path, record: dict[str, Any]) -> Path:
    return write_json(output_dir / DONE_MARKER, {**record, "finished_at": utc_stamp()})


# --------------------------------------------------------------------------------------------------------------
# what a stage consumed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: Path, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Content hash of a file; the hash in ``previous`` is reused when size and mtime are unchanged (as git and
    make do), so checking a large unchanged file costs one stat."""
    st = path.stat()
    if (
        previous
        and previous.get("sha256")
        and previous.get("size") == st.st_size
        and previous.get("mtime_ns") == st.st_mtime_ns
    ):
        return dict(previous)
    return {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def folder_files(folder: Path, recursive: bool) -> list[Path]:
    """The files of a data folder (recursive) or a model folder (top level; not logs, records, provenance),
    hidden files and datasets' `cache-*.arrow` files left out."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    keep = []
    for path in found:
        parts = path.relative_to(folder).parts
        if any(part.startswith(".") for part in parts) or not path.is_file():
            continue
        if path.name.startswith("cache-") and path.suffix == ".arrow":  # written next to the data by datasets
            continue
        if not recursive and path.name in _NOT_MODEL_FILES:
            continue
        keep.append(path)
    return sorted(keep)


def input_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the inputs a record holds and the inputs now, in words."""
    changes = []
    old_files, new_files = recorded.get("files") or {}, current.get("files") or {}
    for label in sorted(set(old_files) | set(new_files)):
        if label not in new_files:
            changes.append(f"{label} is no longer read (or is gone)")
        elif label not in old_files:
            changes.append(f"{label} is read now but was not then")
        elif old_files[label].get("sha256") != new_files[label].get("sha256"):
            changes.append(
                f"{label} changed (sha256 {old_files[label].get('sha256', '?')[:12]} -> "
                f"{new_files[label]['sha256'][:12]})"
            )
    old_base, new_base = recorded.get("base") or {}, current.get("base") or {}
    # A base is the same stage (by recipe), the same files or the same Hub id wherever the outputs now live.
    if (
        old_base.get("kind") != new_base.get("kind")
        or _base_text(old_base) != _base_text(new_base)
        and new_base.get("kind") != "folder"
    ):
        if old_base or new_base:
            changes.append(f"its base model changed ({_base_text(old_base)} -> {_base_text(new_base)})")
    elif new_base.get("kind") == "stage" and old_base.get("run_id") != new_base.get("run_id"):
        if new_base.get("run_id") is None:
            changes.append(
                f"its base stage {new_base.get('stage')} is not finished now (it will be trained "
                "again, so this stage's outputs would not come from it)"
            )
        else:
            changes.append(
                f"its base stage {new_base.get('stage')} was retrained (run {old_base.get('run_id')} "
                f"-> {new_base.get('run_id')})"
            )
    elif new_base.get("kind") == "folder" and new_base.get("files") is not None:
        old, new = old_base.get("files") or {}, new_base["files"]
        differ = sorted(
            name
            for name in set(old) | set(new)
            if (old.get(name) or {}).get("sha256") != (new.get(name) or {}).get("sha256")
        )
        if differ:
            changes.append(
                f"its base model folder {new_base.get('path')} changed ({', '.join(differ[:4])}"
                + (f" and {len(differ) - 4} more" if len(differ) > 4 else "")
                + ")"
            )
    elif new_base.get("kind") == "hub" and old_base.get("revision") != new_base.get("revision"):
        changes.append(f"its base model revision changed ({old_base.get('revision')} -> {new_base.get('revision')})")
    return changes


def _base_text(base: dict[str, Any]) -> str:
    if not base:
        return "none recorded"
    return str(base.get("stage") or base.get("path") or base.get("id"))


def settings_changes(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    if not isinstance(recorded, dict):
        return ["the recipe changed (the record does not say how)"]
    keys = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    shown = [f"{k}: {_short(recorded.get(k))} -> {_short(current.get(k))}" for k in keys[:5]]
    if len(keys) > 5:
        shown.append(f"and {len(keys) - 5} more")
    return ["recipe changed (" + "; ".join(shown) + ")"] if shown else ["the recipe changed"]


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if value is not None else "unset"
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------------------------
# the one decision


@dataclass
class StageState:
    kind: str  # done | stale | unreadable | weights-missing | finished | resumable | occupied | new
    detail: str = ""  # stale: what changed; unreadable: what is wrong; weights-missing/finished: weights problem
    checkpoint: Path | None = None  # the last complete checkpoint
    step: int | None = None  # its global step
    max_steps: int | None = None
    logged_step: int | None = None  # the last logged training loss
    loss: float | None = None
    run_id: str | None = None  # the run whose outputs these are (from the marker or the inputs record)
    record: dict[str, Any] | None = None  # the marker or inputs record behind this state
    weights: str | None = None  # what is wrong with the final weights (None: complete or not needed yet)
    restore_from: Path | None = None  # a checkpoint whose weights are the final weights
    merge_missing: bool = False  # a LoRA stage whose merged folder is missing (the adapter is fine)
    bad_file: Path | None = None  # unreadable: the record that cannot be read
    note: str = ""

    @property
    def reusable(self) -> bool:
        """Its outputs stand as they are (a later stage may start from them) once the next run finishes it."""
        return self.kind in ("done", "weights-missing", "finished")


def assess(
    output_dir: Path,
    digest: str,
    settings: dict[str, Any],
    inputs_now: Callable[[dict[str, Any] | None], dict[str, Any]],
    *,
    adapter: bool = False,
    merged: bool = False,
) -> StageState:
    """The state of one stage folder. ``inputs_now(previous)`` gives what the stage would consume now (with
    ``previous`` the recorded inputs, so unchanged files are not hashed again)."""
    checkpoints = complete_checkpoints(output_dir) if output_dir.is_dir() else []
    last = checkpoints[-1] if checkpoints else None
    trainer = read_trainer_state(last) if last else None
    logged_step, loss = last_logged(trainer)
    base = {
        "checkpoint": last,
        "step": trainer["global_step"] if trainer else None,
        "max_steps": trainer.get("max_steps") if trainer else None,
        "logged_step": logged_step,
        "loss": loss,
    }

    def restorable() -> Path | None:
        if last is None or not finished_training(trainer) or settings.get("load_best_model_at_end"):
            return None  # with load_best_model_at_end the final model is the best checkpoint, not the last
        return last if weights_problem(last, adapter) is None else None

    def final_problem() -> tuple[str | None, bool]:
        problem = weights_problem(output_dir, adapter)
        merged_problem = weights_problem(output_dir / "merged") if problem is None and merged else None
        if merged_problem is not None:
            return f"merged/{merged_problem}", True
        return problem, False

    marker, problem = read_record(output_dir / DONE_MARKER)
    if marker is not None and not marker.get("run_id"):  # an older smaug's marker: its bytes identify the run
        marker["run_id"] = "marker-" + sha256_file(output_dir / DONE_MARKER)[:12]
    if problem:
        return StageState(
            "unreadable",
            f"its done-marker {output_dir / DONE_MARKER} {problem}",
            bad_file=output_dir / DONE_MARKER,
            **base,
        )
    if marker:
        changes = [] if marker["sha256"] == digest else settings_changes(marker.get("settings"), settings)
        note = ""
        if isinstance(marker.get("inputs"), dict):
            changes += input_changes(marker["inputs"], inputs_now(marker["inputs"]))
        else:
            note = "inputs not recorded (marker written by an older smaug)"
        if changes:
            return StageState("stale", "; ".join(changes), run_id=marker.get("run_id"), record=marker, **base)
        weights, merge_missing = final_problem()
        if weights:
            return StageState(
                "weights-missing",
                weights,
                run_id=marker.get("run_id"),
                record=marker,
                weights=weights,
                merge_missing=merge_missing,
                restore_from=None if merge_missing else restorable(),
                note=note,
                **base,
            )
        return StageState("done", run_id=marker.get("run_id"), record=marker, note=note, **base)

    if last is None:
        if weights_problem(output_dir, adapter) is None:
            return StageState(
                "occupied",
                "it holds model weights but no done-marker and no checkpoints (not "
                "written by a run of this stage, or its records were deleted)",
                **base,
            )
        return StageState("new", **base)
    record, problem = read_record(output_dir / INPUTS_RECORD)
    if problem:
        return StageState(
            "unreadable",
            f"its run record {output_dir / INPUTS_RECORD} {problem}",
            bad_file=output_dir / INPUTS_RECORD,
            **base,
        )
    note = ""
    if record:
        changes = [] if record["sha256"] == digest else settings_changes(record.get("settings"), settings)
        if isinstance(record.get("inputs"), dict):
            changes += input_changes(record["inputs"], inputs_now(record["inputs"]))
        if changes:
            return StageState(
                "stale",
                "the checkpoints were written with other inputs: " + "; ".join(changes),
                run_id=record.get("run_id"),
                record=record,
                **base,
            )
    else:
        note = "checkpoints written without a run record (by hand or by an older smaug): taken as they are"
    if finished_training(trainer):
        weights, merge_missing = final_problem()
        return StageState(
            "finished",
            weights or "",
            run_id=(record or {}).get("run_id"),
            record=record,
            weights=weights,
            merge_missing=merge_missing,
            restore_from=restorable() if weights and not merge_missing else None,
            note=note,
            **base,
        )
    return StageState("resumable", run_id=(record or {}).get("run_id"), record=record, note=note, **base)
