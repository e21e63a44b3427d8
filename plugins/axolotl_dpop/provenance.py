"""`smaug_provenance.json`: what a model folder came from. Importable without axolotl and without smaug."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from axolotl_dpop.atomic import write_text

PROVENANCE_FILE = "smaug_provenance.json"
SCHEMA_VERSION = 1
TRAINING_PACKAGES = ("smaug-dpop", "axolotl", "trl", "transformers", "peft", "torch", "accelerate", "datasets")
# The config keys a record keeps.
_TRAINING_KEYS = (
    "rl adapter learning_rate rl_beta dpop_lambda slic_lambda max_steps num_epochs optimizer lr_scheduler "
    "micro_batch_size gradient_accumulation_steps sequence_len seed load_in_4bit load_in_8bit deepspeed"
).split()


def _known_schema(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise ValueError(f"this reader reads schema {SCHEMA_VERSION}")
    return value


class Provenance(BaseModel):
    """One model folder's record. `parent` is the base model's own record (a local base with one), kept as
    read: `validate_provenance` checks it when a lineage walk reaches it. Other fields (`created_by`, ...)
    are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    schema_version: Annotated[int, AfterValidator(_known_schema)] = Field(SCHEMA_VERSION, alias="schema")
    base_model: str | None = None
    base_model_revision: str | None = None
    license: str | None = None  # set only for a model created from scratch: it ends the lineage
    license_name: str | None = None
    license_link: str | None = None
    recipe: str | None = None
    parent: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    datasets: list[dict[str, Any]] = []
    hardware: dict[str, Any] | None = None
    versions: dict[str, str | None] = {}
    finished_at: str | None = None

    @model_validator(mode="after")
    def _has_a_lineage(self):
        if self.license is None and not self.base_model:
            raise ValueError("neither `base_model` nor `license` is set, so the lineage cannot be followed")
        return self

    def record(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


def validate_provenance(data: Any, where: str) -> Provenance:
    """``data`` as a Provenance; a one-line ValueError naming ``where`` and the field otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got a JSON {type(data).__name__}.")
    try:
        return Provenance.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = f"field `{first['loc'][0]}`: " if first["loc"] else ""
        raise ValueError(f"{where}: {field}{first['msg']}; re-create the file with the stage that wrote it.") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); re-create it by re-running the stage that wrote it."
        ) from None
    except RecursionError:
        # Each stage nests its base's record under `parent`: only ~1,000 stages in one lineage get here.
        raise ValueError(
            f"{path}: its `parent` records are nested deeper than the JSON reader allows (~1,000 levels); "
            "no real lineage is that long: re-create it with the stage that wrote it."
        ) from None


def read_provenance(folder: str | os.PathLike) -> Provenance | None:
    """The folder's provenance, None when it has none; a one-line ValueError naming the file when it is
    unreadable (an OSError as raised)."""
    path = Path(folder) / PROVENANCE_FILE
    return validate_provenance(_load_json(path), str(path)) if path.is_file() else None


def write_provenance(folder: str | os.PathLike, record: dict | Provenance) -> Path:
    """Validate ``record`` and write it to `<folder>/smaug_provenance.json` atomically."""
    path = Path(folder) / PROVENANCE_FILE
    if isinstance(record, Provenance):
        record = record.record()
    validate_provenance(record, str(path))
    return write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def utc_stamp() -> str:
    """Now in UTC, as `20260131T120000Z` (ISO 8601 basic: fits records and file names alike)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def package_versions(*names: str) -> dict[str, str | None]:
    """{distribution: installed version, or None when it is not installed}, in the order given."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance_record(*, base_model: str | None, packages: tuple[str, ...] = TRAINING_PACKAGES, **fields: Any) -> dict:
    """A complete record of ``fields`` (any of Provenance's, or others such as `created_by`), with the versions
    of ``packages``, the time, and the base's own record as `parent` when the base is a local folder with one."""
    parent = read_provenance(base_model) if base_model and Path(base_model).is_dir() else None
    versions = package_versions(*packages)
    return Provenance(
        base_model=base_model, parent=parent and parent.record(), versions=versions, finished_at=utc_stamp(), **fields
    ).record()


def training_record(cfg, *, recipe: str | None = None, world_size: int | None = None) -> dict:
    """The record of an `axolotl train` run, from its validated config. ``recipe`` and ``world_size`` default
    to what the run's environment says (SMAUG_RECIPE, WORLD_SIZE)."""
    training = {key: cfg.get(key) for key in _TRAINING_KEYS}
    rl = next((own for own in ("dpop", "slic") if cfg.get(own)), None) or cfg.get("rl")
    training["rl"] = None if rl is None else str(getattr(rl, "value", rl))
    if cfg.get("dpo_loss_type"):
        training["dpo_loss_type"] = list(cfg.get("dpo_loss_type"))
    datasets = [
        {
            "path": str(d.get("path")),
            "type": d.get("type") if isinstance(d.get("type"), str) else "user_defined",
            "split": d.get("split"),
            "name": d.get("name"),
        }
        for d in (cfg.get("datasets") or [])
    ]
    # The stage chain runs a per-run copy of the recipe and names the original in SMAUG_RECIPE.
    recipe = recipe or os.environ.get("SMAUG_RECIPE") or (str(cfg.get("axolotl_config_path") or "") or None)
    import torch

    cuda = torch.cuda.is_available()
    device = {"accelerator": "cuda", "device_name": torch.cuda.get_device_name(0)} if cuda else {"accelerator": "cpu"}
    hardware = {"device_name": None, **device, "num_processes": world_size or int(os.environ.get("WORLD_SIZE", "1"))}
    return provenance_record(
        base_model=str(cfg.get("base_model")),
        base_model_revision=cfg.get("revision_of_model"),
        recipe=recipe,
        training=training,
        datasets=datasets,
        hardware=hardware,
    )
