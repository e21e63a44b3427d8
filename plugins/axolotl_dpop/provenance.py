"""`smaug_provenance.json`: what a trained folder came from, for model cards and the stage chain.

Written by DPOPPlugin when `axolotl train` finishes. `parent` nests the base model's own provenance
when the base is a local folder we trained, so the whole lineage travels with the weights."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PROVENANCE_FILE = "smaug_provenance.json"
SCHEMA_VERSION = 1
_TRAINING_KEYS = ("rl", "adapter", "learning_rate", "rl_beta", "dpop_lambda", "slic_lambda", "max_steps", "num_epochs",
                  "optimizer", "lr_scheduler", "micro_batch_size", "gradient_accumulation_steps",
                  "sequence_len", "seed", "load_in_4bit", "load_in_8bit", "deepspeed")
_PACKAGES = ("smaug-dpop", "axolotl", "trl", "transformers", "peft", "torch", "accelerate", "datasets")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_provenance(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hardware(num_processes: int) -> dict:
    import torch

    if torch.cuda.is_available():
        return {"accelerator": "cuda", "device_name": torch.cuda.get_device_name(0),
                "num_processes": num_processes}
    return {"accelerator": "cpu", "device_name": None, "num_processes": num_processes}


def build_provenance(cfg) -> dict:
    base_model = str(cfg.get("base_model"))
    training = {key: cfg.get(key) for key in _TRAINING_KEYS}
    plugin_rl = next((rl for rl in ("dpop", "slic") if cfg.get(rl)), None)
    if plugin_rl:
        training["rl"] = plugin_rl
    elif training["rl"] is not None:
        training["rl"] = str(getattr(training["rl"], "value", training["rl"]))
    if cfg.get("dpo_loss_type"):
        training["dpo_loss_type"] = list(cfg.get("dpo_loss_type"))
    datasets = [
        {"path": str(d.get("path")), "type": d.get("type") if isinstance(d.get("type"), str) else "user_defined",
         "split": d.get("split"), "name": d.get("name")}
        for d in (cfg.get("datasets") or [])
    ]
    return {
        "schema": SCHEMA_VERSION,
        # The stage chain runs a per-run copy of the recipe and names the original in SMAUG_RECIPE.
        "recipe": os.environ.get("SMAUG_RECIPE") or (str(cfg.get("axolotl_config_path"))
                                                     if cfg.get("axolotl_config_path") else None),
        "base_model": base_model,
        "base_model_revision": cfg.get("revision_of_model"),
        "parent": read_provenance(base_model) if Path(base_model).is_dir() else None,
        "license": None,
        "training": training,
        "datasets": datasets,
        "hardware": _hardware(int(os.environ.get("WORLD_SIZE", "1"))),
        "versions": package_versions(),
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_provenance(cfg) -> Path:
    path = Path(cfg.get("output_dir")) / PROVENANCE_FILE
    write_json_atomic(path, build_provenance(cfg))
    return path
