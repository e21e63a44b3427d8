"""What a stage folder holds besides the chain's records: the trainer's `checkpoint-N` folders (complete or
half-written, the last logged loss, whether training reached its last step) and the final weights (whole
safetensors / torch files, the files a model folder needs). Files only: no model, no axolotl, no GPU."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from smaug.common.safetensors import safetensors_header

TRAINER_STATE = "trainer_state.json"
# The files `save_pretrained` writes for a model (besides weights), copied when final weights are restored
# from the last checkpoint.
_MODEL_SIDE_FILES = ("config.json", "generation_config.json", "adapter_config.json")


# --------------------------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_step(path: Path) -> int | None:
    tail = path.name.split("-")[-1]
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json (the Trainer writes it last), or None if missing or half-written."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return None
    if not isinstance(state.get("max_steps", 0), int) or not isinstance(state.get("log_history", []), list):
        return None
    return state


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders the trainer finished writing (a readable trainer_state.json), by step."""
    found = [
        p
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and checkpoint_step(p) is not None and read_trainer_state(p) is not None
    ]
    return sorted(found, key=checkpoint_step)


def set_aside_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """A run killed while saving leaves a checkpoint without a readable trainer_state.json; axolotl would resume
    from it (it takes the highest number) and fail. Rename such folders `incomplete-checkpoint-N` so the last
    complete one is used. A second interrupted save of the same step replaces the first one set aside (both
    are half-written copies of the same step; keeping one bounds the disk they take)."""
    moved = []
    # Some transformers versions save into `tmp-checkpoint-N` and rename it when complete: a leftover one is
    # half-written by definition.
    staged = [p for p in output_dir.glob("tmp-checkpoint-*") if p.is_dir() and p.name[4:].split("-")[-1].isdigit()]
    for path in [*output_dir.glob("checkpoint-*"), *staged]:
        if checkpoint_step(path) is None and path not in staged:
            continue
        if path.is_dir() and path not in staged and read_trainer_state(path) is not None:
            continue  # complete
        if path.is_file() or path.is_symlink():  # axolotl would try to resume from a file named checkpoint-N
            target = path.with_name(f"incomplete-{path.name}")
            os.replace(path, target)
            moved.append(target)
            continue
        target = path.with_name(f"incomplete-{path.name.removeprefix('tmp-')}")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(path, target)
        except FileNotFoundError:  # gone meanwhile
            continue
        moved.append(target)
    return moved


def last_logged(state: dict[str, Any] | None) -> tuple[int | None, float | None]:
    """(step, loss) of the last logged training loss in a trainer state."""
    for entry in reversed((state or {}).get("log_history") or []):
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("loss"), (int, float))
            and isinstance(entry.get("step"), int)
        ):
            return entry["step"], float(entry["loss"])
    return None, None


def finished_training(state: dict[str, Any] | None) -> bool:
    """The Trainer stopped at its last step (it records the max_steps it computed, from max_steps or epochs)."""
    return bool(state) and int(state.get("max_steps") or 0) > 0 and state["global_step"] >= int(state["max_steps"])


# --------------------------------------------------------------------------------------------------------------
# final weights


def safetensors_problem(path: Path) -> str | None:
    """None when the file is a whole safetensors file (`common.safetensors.safetensors_header`: the header
    parses and the tensors fill the data section to the file's end)."""
    try:
        _, problem = safetensors_header(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as err:
        return f"{path.name} is damaged ({err})"
    if problem is None:
        return None
    return f"{path.name} is {'truncated' if 'truncated' in problem else 'damaged'} ({problem})"


def _weight_file_problem(path: Path) -> str | None:
    if path.suffix == ".safetensors":
        return safetensors_problem(path)
    if not path.is_file():
        return f"{path.name} is missing"
    return None if zipfile.is_zipfile(path) else f"{path.name} is truncated (not a whole torch zip file)"


def weights_problem(folder: Path, adapter: bool = False) -> str | None:
    """None when ``folder`` holds whole final weights (a LoRA adapter when ``adapter``); else what is wrong."""
    if adapter:
        if not (folder / "adapter_config.json").is_file():
            return "adapter_config.json is missing"
        names = ["adapter_model.safetensors", "adapter_model.bin"]
    else:
        if not (folder / "config.json").is_file():
            return "config.json is missing"
        names = ["model.safetensors", "pytorch_model.bin"]
    for name in names:
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"{index.name} is damaged"
            for shard in shards:
                problem = _weight_file_problem(folder / shard)
                if problem:
                    return f"{problem} (listed in {index.name})"
            return None
        if (folder / name).exists():
            return _weight_file_problem(folder / name)
    return f"{names[0]} is missing"


def weight_files(folder: Path) -> list[Path]:
    """The files that make up a saved model or adapter (weights, index, config), as `save_pretrained` writes them."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (p.name in _MODEL_SIDE_FILES or p.name.startswith(("model", "pytorch_model", "adapter_model")))
    )
