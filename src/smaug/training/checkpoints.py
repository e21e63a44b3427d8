"""A stage folder's `checkpoint-N` folders and whether a folder holds a whole model, from files only (no torch)."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError, safe_open

TRAINER_STATE = "trainer_state.json"
# What `save_pretrained` writes besides the weights: copied with them when final weights are restored from a
# checkpoint (the Trainer saves the tokenizer into every checkpoint).
_SIDE_FILES = ("config.json", "generation_config.json", "adapter_config.json", "special_tokens_map.json")


class TrainerState(BaseModel):
    """The part of the Trainer's trainer_state.json the chain reads."""

    global_step: int
    max_steps: int = 0
    log_history: list[dict[str, Any]] = []

    @property
    def finished(self) -> bool:
        """The Trainer stopped at its last step (it records the max_steps it computed, from max_steps or epochs)."""
        return 0 < self.max_steps <= self.global_step

    def last_logged(self) -> tuple[int | None, float | None]:
        """(step, loss) of the last logged training loss."""
        for entry in reversed(self.log_history):
            if isinstance(entry.get("loss"), (int, float)) and isinstance(entry.get("step"), int):
                return entry["step"], float(entry["loss"])
        return None, None


def trainer_state(checkpoint: Path) -> TrainerState | None:
    """None when missing or half-written (the Trainer writes it last)."""
    try:
        return TrainerState.model_validate_json((checkpoint / TRAINER_STATE).read_bytes())
    except (OSError, ValidationError):
        return None


def _step(name: str) -> int | None:
    tail = name.removeprefix("checkpoint-")
    return int(tail) if name.startswith("checkpoint-") and tail.isdigit() else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders the Trainer finished writing (a readable trainer_state.json), by step."""
    found = [
        p for p in output_dir.glob("checkpoint-*") if _step(p.name) is not None and p.is_dir() and trainer_state(p)
    ]
    return sorted(found, key=lambda p: _step(p.name))


def set_aside_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """axolotl resumes from the highest `checkpoint-N` and fails on a half-written one: rename those (and a leftover
    `tmp-checkpoint-N`, or a file of that name) to `incomplete-checkpoint-N`, so it resumes from the last complete
    one. A second half-written copy of one step replaces the first (both are useless; this bounds the disk)."""
    moved = []
    for path in [*output_dir.glob("checkpoint-*"), *output_dir.glob("tmp-checkpoint-*")]:
        name = path.name.removeprefix("tmp-")
        if _step(name) is None or (name == path.name and path.is_dir() and trainer_state(path)):
            continue
        target = path.with_name(f"incomplete-{name}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        try:
            os.replace(path, target)
        except FileNotFoundError:  # gone meanwhile
            continue
        moved.append(target)
    return moved


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    if path.suffix != ".safetensors":
        return None if zipfile.is_zipfile(path) else f"{path.name} is truncated (not a whole torch zip file)"
    try:
        with safe_open(path, "numpy"):  # safetensors checks the header, the offsets and the file's size
            return None
    except (SafetensorError, OSError) as err:
        broken = "truncated" if any(w in str(err) for w in ("not fully covered", "too small")) else "damaged"
        return f"{path.name} is {broken} ({err})"


def model_problem(folder: Path, adapter: bool = False) -> str | None:
    """None when ``folder`` holds a whole model a later stage can load (config, weights, tokenizer), or a whole
    LoRA adapter when ``adapter``; else what is missing or broken."""
    prefix = "adapter_" if adapter else ""
    needed = [f"{prefix}config.json"] + ([] if adapter else ["tokenizer_config.json"])
    for name in needed:
        if not (folder / name).is_file():
            return f"{name} is missing"
    for name in (f"{prefix}model.safetensors", "adapter_model.bin" if adapter else "pytorch_model.bin"):
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return f"{index.name} is damaged"
            problems = [f"{p} (listed in {index.name})" for s in shards if (p := _file_problem(folder / s))]
            return problems[0] if problems else None
        if (folder / name).exists():
            return _file_problem(folder / name)
    return f"{prefix}model.safetensors is missing"


def model_files(folder: Path) -> list[Path]:
    """The files `save_pretrained` writes for a model or adapter and its tokenizer."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and (
            p.name in _SIDE_FILES
            or p.name.startswith(("model", "pytorch_model", "adapter_model", "tokenizer", "chat_template"))
        )
    )
