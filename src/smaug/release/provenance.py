"""A model's lineage from `smaug_provenance.json` (the format, its writer and its reader live in the plugin:
`axolotl_dpop.provenance`; this module validates what it reads and walks the lineage).

A trained model's provenance names its ``base_model``; when that base was a local folder with its own
provenance, the plugin nests it under ``parent``. Walking ``parent`` gives the local stages of the lineage,
newest first, until a stage that starts from a Hub id (or a model we created from scratch: ``license`` set).
"""

from __future__ import annotations

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
        raise UserError(
            f"{model_dir}: not a folder. Pass the output folder of a training run (it holds {PROVENANCE_FILE})."
        )
    if not path.is_file():
        raise UserError(
            f"{path}: missing. It is written at the end of `axolotl train` by the DPOP plugin (list "
            "`axolotl_dpop.DPOPPlugin` under `plugins:` in the recipe) and by `smaug showcase tiny-model`; without it the "
            "model's lineage, licence and training settings are unknown."
        )
    try:
        data = read_provenance(model_dir).record()
    except ValueError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err}); check its permissions.") from err
    _check_schema(data, str(path))
    return data


# Fields the lineage walk and the card read, with the JSON types the plugin writes for them.
_FIELD_TYPES = {
    "base_model": (str,),
    "license": (str,),
    "parent": (dict,),
    "recipe": (str,),
    "training": (dict,),
    "datasets": (list,),
    "hardware": (dict,),
    "versions": (dict,),
    "license_name": (str,),
    "license_link": (str,),
    "base_model_revision": (str,),
    "finished_at": (str,),
}


def _check_schema(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object.")
    if data.get("schema") != SCHEMA_VERSION:
        raise UserError(f"{where}: field `schema` is {data.get('schema')!r}; this smaug reads schema {SCHEMA_VERSION}.")
    for key, types in _FIELD_TYPES.items():
        value = data.get(key)
        if value is not None and not isinstance(value, types):
            raise UserError(
                f"{where}: field `{key}` is a JSON {type(value).__name__}, expected "
                f"{' or '.join(t.__name__ for t in types)} or null; re-create the file with the stage that wrote it."
            )
    if any(not isinstance(d, dict) for d in data.get("datasets") or []):
        raise UserError(f"{where}: field `datasets` must be a list of objects.")
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


def _file_identity(path: Path) -> tuple[int, int]:
    """The same file however it is reached (symlinks, `..`, another spelling, a hard link)."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def local_stages(model_dir: str | Path) -> tuple[list[LineageStage], str | None]:
    """Walk the lineage through local stages, newest first, at any depth.

    Returns ``(stages, hub_base)``: ``hub_base`` is the Hub id the oldest stage started from, or None when the
    oldest stage is a model we created from scratch (its ``license`` is set).

    The walk is a loop, not a recursion. Nested `parent` records cannot form a cycle (JSON is a tree); a
    cycle can only come from `base_model`s naming local folders, and is found by the identity of each
    provenance file read (device + inode), whatever path spelled it."""
    root = Path(model_dir)
    root_file = root / PROVENANCE_FILE
    stage = LineageStage(load_provenance(root), str(root_file), display_name(str(root)))
    read_files = {_file_identity(root_file): str(root_file)}
    stages: list[LineageStage] = []
    current_file, nested = str(root_file), 0  # the file being walked, and how many `parent`s deep in it
    while True:
        stages.append(stage)
        if stage.own_license is not None:
            return stages, None  # created from scratch by us: the lineage ends here
        parent = stage.provenance.get("parent")
        base = stage.base_model
        if isinstance(parent, dict):
            nested += 1
            where = f"{current_file}: `parent` #{nested}"  # #2 is the parent's parent, as nested in the file
            _check_schema(parent, where)
            stage = LineageStage(parent, where, display_name(base))
            continue
        if base and Path(base).expanduser().is_dir():
            # A local base recorded without nesting: read its own provenance file.
            local = Path(base).expanduser()
            provenance = load_provenance(local)
            identity = _file_identity(local / PROVENANCE_FILE)
            if identity in read_files:
                raise UserError(
                    f"{stage.where}: base_model {base!r} leads back to {read_files[identity]}, which is already in "
                    f"this lineage: the lineage is a cycle. Point base_model at the model this stage really started from."
                )
            current_file, nested = str(local / PROVENANCE_FILE), 0
            read_files[identity] = current_file
            stage = LineageStage(provenance, current_file, display_name(base))
            continue
        if looks_like_hub_id(base):
            return stages, base
        raise UserError(
            f"{stage.where}: base_model {base!r} is neither a Hub id (`org/name`) nor a local folder with "
            f"{PROVENANCE_FILE}, so its licence cannot be traced. Point base_model at the Hub id it came from, or "
            f"put a {PROVENANCE_FILE} into that folder."
        )
