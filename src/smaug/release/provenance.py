"""A model's lineage from `smaug_provenance.json` (the format, its writer and its reader live in the plugin:
`axolotl_dpop.provenance`; this module validates what it reads and walks the lineage).

A trained model's provenance names its ``base_model``; when that base was a local folder with its own
provenance, the plugin nests it under ``parent``. Walking ``parent`` gives the local stages of the lineage,
newest first, until a stage that starts from a Hub id (or a model we created from scratch: ``license`` set).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_dpop.provenance import PROVENANCE_FILE, SCHEMA_VERSION, read_provenance

from smaug.common.errors import UserError
from smaug.common.hub import display_name, looks_like_hub_id

__all__ = ["PROVENANCE_FILE", "LineageStage", "load_provenance", "local_stages"]


def load_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The provenance dict of ``model_dir``; a clear UserError when it is missing or not valid JSON."""
    path = Path(model_dir) / PROVENANCE_FILE
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: not a folder. Pass the output folder of a training run (it holds {PROVENANCE_FILE}).")
    if not path.is_file():
        raise UserError(
            f"{path}: missing. It is written at the end of `axolotl train` by the DPOP plugin (list "
            "`axolotl_dpop.DPOPPlugin` under `plugins:` in the recipe) and by `smaug showcase tiny-model`; without it the "
            "model's lineage, licence and training settings are unknown."
        )
    try:
        data = read_provenance(model_dir)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-create it by re-running the stage that wrote it.") from err
    _check_schema(data, str(path))
    return data


def _check_schema(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object.")
    if data.get("schema") != SCHEMA_VERSION:
        raise UserError(f"{where}: field `schema` is {data.get('schema')!r}; this smaug reads schema {SCHEMA_VERSION}.")
    if data.get("license") is None and not data.get("base_model"):
        raise UserError(f"{where}: neither `base_model` nor `license` is set, so the lineage cannot be followed.")


@dataclass
class LineageStage:
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


def local_stages(model_dir: str | Path) -> tuple[list["LineageStage"], str | None]:
    """Walk the lineage through local stages, newest first.

    Returns ``(stages, hub_base)``: ``hub_base`` is the Hub id the oldest stage started from, or None when the
    oldest stage is a model we created from scratch (its ``license`` is set)."""
    root = Path(model_dir)
    stage = LineageStage(load_provenance(root), str(root / PROVENANCE_FILE), display_name(str(root)))
    stages: list[LineageStage] = []
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
            stage = LineageStage(parent, where, display_name(base))
            continue
        if base and Path(base).expanduser().is_dir():
            # A local base recorded without nesting: read its own provenance file.
            local = Path(base).expanduser()
            stage = LineageStage(load_provenance(local), str(local / PROVENANCE_FILE), display_name(base))
            continue
        if looks_like_hub_id(base):
            return stages, base
        raise UserError(
            f"{stage.where}: base_model {base!r} is neither a Hub id (`org/name`) nor a local folder with "
            f"{PROVENANCE_FILE}, so its licence cannot be traced. Point base_model at the Hub id it came from, or "
            f"put a {PROVENANCE_FILE} into that folder."
        )
