"""Read side of `smaug_provenance.json` (the plugin, `smaug tiny-model` and the demo converter write it).

A trained model's provenance names its ``base_model``; when that base was a local folder with its own
provenance, the plugin nests it under ``parent``. Walking ``parent`` gives the local stages of the lineage,
newest first, until a stage that starts from a Hub id (or a model we created from scratch: ``license`` set).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smaug.errors import UserError
from smaug.paths import PROVENANCE_FILE

# `org/name` as the Hub spells repo ids (no local path separators beyond the one slash).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def looks_like_hub_id(name: str | None) -> bool:
    return bool(name) and bool(HUB_ID_RE.match(name)) and not Path(name).expanduser().exists()


def display_name(model: str | None) -> str:
    """A Hub id as is; a local path as its folder name (cards must not leak local paths)."""
    if not model:
        return "unknown"
    return model if looks_like_hub_id(model) else Path(model.rstrip("/")).name or model


def load_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The provenance dict of ``model_dir``; a clear UserError when it is missing or not valid JSON."""
    path = Path(model_dir) / PROVENANCE_FILE
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: not a folder. Pass the output folder of a training run (it holds {PROVENANCE_FILE}).")
    if not path.is_file():
        raise UserError(
            f"{path}: missing. It is written at the end of `axolotl train` by the DPOP plugin (list "
            "`axolotl_dpop.DPOPPlugin` under `plugins:` in the recipe) and by `smaug tiny-model`; without it the "
            "model's lineage, licence and training settings are unknown."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-create it by re-running the stage that wrote it.") from err
    _check_schema(data, str(path))
    return data


def _check_schema(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object.")
    if data.get("schema") != 1:
        raise UserError(f"{where}: field `schema` is {data.get('schema')!r}; this smaug reads schema 1.")
    if data.get("license") is None and not data.get("base_model"):
        raise UserError(f"{where}: neither `base_model` nor `license` is set, so the lineage cannot be followed.")


@dataclass
class Stage:
    """One local stage of a lineage: a folder we trained (or created) and its provenance."""

    provenance: dict[str, Any]
    where: str  # file path (or 'parent of ...') for error messages
    name: str = ""  # what the card shows: a folder name, never a local absolute path

    @property
    def base_model(self) -> str | None:
        return self.provenance.get("base_model")

    @property
    def recipe(self) -> str | None:
        return self.provenance.get("recipe")

    @property
    def own_license(self) -> str | None:
        return self.provenance.get("license")


def local_stages(model_dir: str | Path) -> tuple[list[Stage], str | None]:
    """Walk the lineage through local stages, newest first.

    Returns ``(stages, hub_base)``: ``hub_base`` is the Hub id the oldest stage started from, or None when the
    oldest stage is a model we created from scratch (its ``license`` is set)."""
    root = Path(model_dir)
    stage = Stage(load_provenance(root), str(root / PROVENANCE_FILE), display_name(str(root)))
    stages: list[Stage] = []
    seen: set[int] = set()
    while True:
        stages.append(stage)
        if id(stage.provenance) in seen or len(stages) > 64:  # a loop would never end; no real chain is this deep
            raise UserError(f"{stage.where}: the `parent` chain does not end; check the provenance files.")
        seen.add(id(stage.provenance))
        if stage.own_license is not None:
            return stages, None  # created from scratch by us: the lineage ends here
        parent = stage.provenance.get("parent")
        base = stage.base_model
        if isinstance(parent, dict):
            where = f"`parent` of {stage.where}"
            _check_schema(parent, where)
            stage = Stage(parent, where, display_name(base))
            continue
        if base and Path(base).expanduser().is_dir():
            # A local base recorded without nesting: read its own provenance file.
            local = Path(base).expanduser()
            stage = Stage(load_provenance(local), str(local / PROVENANCE_FILE), display_name(base))
            continue
        if looks_like_hub_id(base):
            return stages, base
        raise UserError(
            f"{stage.where}: base_model {base!r} is neither a Hub id (`org/name`) nor a local folder with "
            f"{PROVENANCE_FILE}, so its licence cannot be traced. Point base_model at the Hub id it came from, or "
            f"put a {PROVENANCE_FILE} into that folder."
        )
