"""What a stage's output folder says about it: finished (a done-marker with the recipe's hash), resumable
(complete `checkpoint-N` folders) or new. The chain reads and writes these; nothing else does."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from smaug.common.files import write_json_atomic
from smaug.common.records import utc_timestamp

DONE_MARKER = ".smaug_stage_done"


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Hash of the settings (not the comments): a done stage whose recipe changed is not silently reused."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def stage_status(output_dir: Path, digest: str) -> str:
    """'done', 'stale' (done with another recipe version), 'resume:<checkpoint>' or 'new'."""
    marker = output_dir / DONE_MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("sha256")
        except (OSError, json.JSONDecodeError):
            recorded = None
        return "done" if recorded == digest else "stale"
    checkpoints = complete_checkpoints(output_dir)
    return f"resume:{checkpoints[-1].name}" if checkpoints else "new"


def write_done_marker(output_dir: Path, recipe_name: str, digest: str) -> Path:
    return write_json_atomic(output_dir / DONE_MARKER, {
        "recipe": recipe_name, "sha256": digest, "output_dir": str(output_dir), "finished_at": utc_timestamp(),
    })


def _step(path: Path) -> int | None:
    tail = path.name.split("-")[-1]
    return int(tail) if path.name.startswith("checkpoint-") and tail.isdigit() else None


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders the trainer finished writing (trainer_state.json is written last), by step."""
    found = [p for p in output_dir.glob("checkpoint-*") if _step(p) is not None and (p / "trainer_state.json").is_file()]
    return sorted(found, key=_step)


def set_aside_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """A run killed while saving leaves a checkpoint without trainer_state.json; axolotl would resume from it
    (it takes the highest number) and fail. Rename such folders so the last complete one is used."""
    moved = []
    for path in output_dir.glob("checkpoint-*"):
        if path.is_dir() and _step(path) is not None and not (path / "trainer_state.json").is_file():
            target = path.with_name(f"incomplete-{path.name}")
            os.replace(path, target)
            moved.append(target)
    return moved
