"""`smaug_provenance.json`: what a model folder came from, for model cards and the stage chain.

The one writer and reader of the file. DPOPPlugin writes it when `axolotl train` finishes; `smaug showcase tiny-model`
and the demo's model converter write it for the models they create, through `provenance_record`. `parent`
nests the base model's own provenance when the base is a local folder with one, so the whole lineage travels
with the weights. (This module stays importable without axolotl and without the `smaug` package.)"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_write

PROVENANCE_FILE = "smaug_provenance.json"
SCHEMA_VERSION = 1
TRAINING_PACKAGES = ("smaug-dpop", "axolotl", "trl", "transformers", "peft", "torch", "accelerate", "datasets")
_TRAINING_KEYS = (
    "rl",
    "adapter",
    "learning_rate",
    "rl_beta",
    "dpop_lambda",
    "slic_lambda",
    "max_steps",
    "num_epochs",
    "optimizer",
    "lr_scheduler",
    "micro_batch_size",
    "gradient_accumulation_steps",
    "sequence_len",
    "seed",
    "load_in_4bit",
    "load_in_8bit",
    "deepspeed",
)


def utc_stamp() -> str:
    """Now in UTC, as `20260131T120000Z` (ISO 8601 basic: fits records and file names alike)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def read_provenance(folder: str | os.PathLike) -> dict | None:
    """The folder's provenance, or None when it has none. Invalid JSON raises json.JSONDecodeError.

    Any nesting depth is read: every stage nests its base's record under `parent`, and the stdlib parser
    recurses once per level (RecursionError near 1,000 levels)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except RecursionError:
        return loads_any_depth(text)


_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_CONSTANTS = (
    ("true", True),
    ("false", False),
    ("null", None),
    ("NaN", math.nan),
    ("Infinity", math.inf),
    ("-Infinity", -math.inf),
)


def loads_any_depth(text: str):
    """`json.loads` without recursion: an explicit stack of open containers, the same values and errors."""
    from json.decoder import scanstring

    def skip(pos: int) -> int:
        return _WS.match(text, pos).end()

    def key_at(pos: int) -> tuple[str, int]:
        if text[pos : pos + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        key, pos = scanstring(text, pos + 1)
        pos = skip(pos)
        if text[pos : pos + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        return key, skip(pos + 1)

    stack: list[list] = []  # [container, key awaiting its value] for every open object/array
    pos = skip(0)
    while True:
        char = text[pos : pos + 1]
        if char in ("{", "["):  # open a container; an empty one is a finished value
            container: dict | list = {} if char == "{" else []
            pos = skip(pos + 1)
            if text[pos : pos + 1] == ("}" if char == "{" else "]"):
                value, pos = container, pos + 1
            else:
                stack.append([container, None])
                if char == "{":
                    stack[-1][1], pos = key_at(pos)
                continue
        elif char == '"':
            value, pos = scanstring(text, pos + 1)
        else:
            number = _NUMBER.match(text, pos)
            if number:
                literal = number.group()
                value = float(literal) if number.group(1) or number.group(2) else int(literal)
                pos = number.end()
            else:
                for word, constant in _CONSTANTS:
                    if text.startswith(word, pos):
                        value, pos = constant, pos + len(word)
                        break
                else:
                    raise json.JSONDecodeError("Expecting value", text, pos)
        while True:  # hand the value to its container; close containers that end here
            pos = skip(pos)
            if not stack:
                if pos != len(text):
                    raise json.JSONDecodeError("Extra data", text, pos)
                return value
            container, key = stack[-1]
            if isinstance(container, dict):
                container[key] = value
            else:
                container.append(value)
            char = text[pos : pos + 1]
            if char == ",":
                pos = skip(pos + 1)
                if isinstance(container, dict):
                    stack[-1][1], pos = key_at(pos)
                break
            if char != ("}" if isinstance(container, dict) else "]"):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            stack.pop()
            value, pos = container, pos + 1


def provenance_record(
    *,
    base_model: str | None,
    license: str | None = None,
    recipe: str | None = None,
    training: dict | None = None,
    datasets: list | None = None,
    hardware: dict | None = None,
    packages: tuple[str, ...] = TRAINING_PACKAGES,
    **extra: Any,
) -> dict:
    """A complete record (schema, versions, time, the base's own provenance as `parent`) in the one schema.

    ``license`` is set only for a model created from scratch (it ends the lineage); ``extra`` adds fields
    such as `created_by` or `conversion`."""
    parent = read_provenance(base_model) if base_model and Path(base_model).is_dir() else None
    record = {
        "schema": SCHEMA_VERSION,
        "recipe": recipe,
        "base_model": base_model,
        "base_model_revision": extra.pop("base_model_revision", None),
        "parent": parent,
        "license": license,
        "training": training,
        "datasets": datasets or [],
        "hardware": hardware,
        **extra,
        "versions": package_versions(*packages),
        "finished_at": utc_stamp(),
    }
    return record


def write_provenance(folder: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` to `<folder>/smaug_provenance.json` atomically."""
    text = json.dumps(record, indent=2, default=str) + "\n"
    return atomic_write(Path(folder) / PROVENANCE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def training_record(cfg, *, recipe: str | None = None, world_size: int | None = None) -> dict:
    """The record of an `axolotl train` run, from its validated config. ``recipe`` and ``world_size`` default
    to what the run's environment says (SMAUG_RECIPE, WORLD_SIZE); the chain passes them when it writes the
    record itself."""
    training = {key: cfg.get(key) for key in _TRAINING_KEYS}
    plugin_rl = next((rl for rl in ("dpop", "slic") if cfg.get(rl)), None)
    if plugin_rl:
        training["rl"] = plugin_rl
    elif training["rl"] is not None:
        training["rl"] = str(getattr(training["rl"], "value", training["rl"]))
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
    recipe = (
        recipe
        or os.environ.get("SMAUG_RECIPE")
        or (str(cfg.get("axolotl_config_path")) if cfg.get("axolotl_config_path") else None)
    )
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    return provenance_record(
        base_model=str(cfg.get("base_model")),
        recipe=recipe,
        training=training,
        datasets=datasets,
        hardware=_hardware(world_size),
        base_model_revision=cfg.get("revision_of_model"),
    )


def package_versions(*names: str) -> dict[str, str | None]:
    """{distribution: installed version, or None when it is not installed}, in the order given."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _hardware(num_processes: int) -> dict:
    import torch

    if torch.cuda.is_available():
        return {"accelerator": "cuda", "device_name": torch.cuda.get_device_name(0), "num_processes": num_processes}
    return {"accelerator": "cpu", "device_name": None, "num_processes": num_processes}
