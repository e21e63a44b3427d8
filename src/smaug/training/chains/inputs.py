"""What each stage consumes (its base stage's run, the local files its recipe reads), recorded in its run
records so that a changed input makes a done stage stale, and the prepared-data folder per set of inputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from smaug.common.paths import rel, repo_path
from smaug.training.chains.plan import DATA_SUFFIXES, Chain, ChainStage, real_path
from smaug.training.state import (
    StageState,
    file_fingerprint,
    folder_files,
)


def _local_path(value: Any) -> Path | None:
    """A recipe value naming a local file or folder (relative to the repository root, where axolotl runs)."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    path = repo_path(os.path.expanduser(value))
    if path.exists() or value.startswith(("./", "../", "/", "~")) or value.endswith(DATA_SUFFIXES):
        return path
    return None


def consumed_paths(recipe: dict[str, Any]) -> list[tuple[str, Path]]:
    """(recipe key, local path) of every local file or folder a stage reads besides its base model: dataset
    paths and data_files, chat templates, tokenizer, DeepSpeed/FSDP configs, an adapter to start from."""
    found = []
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(recipe.get(key) or []):
            if not isinstance(ds, dict):
                continue
            path = _local_path(ds.get("path"))
            if path is not None:  # a local file or folder (a folder's data_files are inside it)
                found.append((f"{key}[{i}].path", path))
            else:  # a Hub dataset's data_files are files of that repo; `path: json` may name local ones
                files = ds.get("data_files")
                files = [files] if isinstance(files, str) else files if isinstance(files, list) else []
                for j, item in enumerate(files):
                    local = repo_path(str(item)) if isinstance(item, str) else None
                    if local is not None and (local.exists() or str(item).startswith(("./", "../", "/"))):
                        found.append((f"{key}[{i}].data_files[{j}]", local))
            template = _local_path(ds.get("chat_template_jinja"))
            if template is not None:
                found.append((f"{key}[{i}].chat_template_jinja", template))
    for key in ("deepspeed", "fsdp_config", "chat_template_jinja", "tokenizer_config", "lora_model_dir"):
        path = _local_path(recipe.get(key))
        if path is not None and real_path(path) != real_path(repo_path(str(recipe.get("base_model")))):
            found.append((key, path))
    return found


def missing_inputs(chain: Chain) -> list[str]:
    """Local files a stage reads, and local base models, that do not exist and no earlier step makes."""
    made = {step["tiny_model"] for step in chain.prepare}
    for stage in chain.stages:
        made |= {stage.output_dir, stage.output_dir / "merged"}
    problems = []
    for stage in chain.stages:
        where = stage.where(chain.name)
        for key, path in consumed_paths(stage.recipe):
            if not path.exists():
                problems.append(f"{where}: `{key}` names {path}, which does not exist; fix the path or create it")
        base = stage.base_path
        if base is not None and base not in made and not base.exists():
            problems.append(
                f"{where}: base_model {stage.recipe['base_model']} does not exist and no earlier "
                "stage of the chain writes it; fix base_model or create that model first"
            )
        elif base is not None and base.is_file():
            problems.append(
                f"{where}: base_model {stage.recipe['base_model']} is a file; it must name a model "
                "folder (config.json, weights, tokenizer) or a Hub id"
            )
    return problems


def stage_inputs(
    chain: Chain, stage: ChainStage, earlier: list[StageState], previous: dict[str, Any] | None
) -> dict[str, Any]:
    """What the stage consumes now: content hashes of its local files and its base model's identity."""
    previous = previous or {}
    old_files = previous.get("files") or {}
    files = {}
    for _, path in consumed_paths(stage.recipe):
        for item in folder_files(path, recursive=True) if path.is_dir() else [path] if path.is_file() else []:
            label = rel(item)
            files[label] = file_fingerprint(item, old_files.get(label))
    return {"files": files, "base": _base_identity(chain, stage, earlier, previous.get("base") or {})}


def _base_identity(
    chain: Chain, stage: ChainStage, earlier: list[StageState], previous: dict[str, Any]
) -> dict[str, Any]:
    base = stage.base_path
    if base is None:
        return {"kind": "hub", "id": str(stage.recipe["base_model"]), "revision": stage.recipe.get("revision_of_model")}
    for other, state in zip(chain.stages[: stage.index], earlier):
        if base in (other.output_dir, other.output_dir / "merged"):
            return {
                "kind": "stage",
                "stage": other.name,
                "path": str(base),
                "run_id": state.run_id if state.reusable else None,
            }
    if not base.is_dir():  # gone: what the stage made from it stands; nothing to compare
        return {"kind": "folder", "path": str(base), "files": None}
    old = previous.get("files") or {} if previous.get("kind") == "folder" else {}
    return {
        "kind": "folder",
        "path": str(base),
        "files": {p.name: file_fingerprint(p, old.get(p.name)) for p in folder_files(base, recursive=False)},
    }


def inputs_digest(inputs: dict[str, Any]) -> str | None:
    """A short content digest of a stage's inputs (None while its base stage has not run)."""
    base = dict(inputs.get("base") or {})
    if base.get("kind") == "stage" and base.get("run_id") is None:
        return None
    if base.get("kind") == "folder":
        base["files"] = {k: v.get("sha256") for k, v in (base.get("files") or {}).items()}
    files = {k: v.get("sha256") for k, v in (inputs.get("files") or {}).items()}
    return hashlib.sha256(json.dumps({"files": files, "base": base}, sort_keys=True).encode()).hexdigest()[:16]


def prepared_folder(stage: ChainStage, inputs: dict[str, Any]) -> Path | None:
    """`<dataset_prepared_path>/inputs-<digest>`: axolotl keys its prepared (tokenized) data by the dataset
    config and the tokenizer's path, not by file contents, so an edited data file or a retrained base stage
    would reuse stale tokens. A folder per set of inputs keeps sharing safe (stages with the same inputs
    share one)."""
    digest = inputs_digest(inputs)
    return stage.prepared_root / f"inputs-{digest}" if digest else None
