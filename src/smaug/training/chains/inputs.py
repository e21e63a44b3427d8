"""What each stage consumes (its base model, its local files), so that a changed input makes a stage stale, and
the prepared-data folder per set of inputs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from smaug.common.paths import rel
from smaug.training.chains.plan import Chain, ChainStage, real_path
from smaug.training.state import Fingerprint, Inputs, StageRecord, StageState, assess

_NOT_DONE = "not done now (it will be trained again, so this stage's outputs would not come from it)"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".jinja")
# Files of a model folder that are not the model: left out of a local base folder's fingerprint.
_NOT_MODEL = {"smaug_provenance.json", "README.md", "training_args.bin", "debug.log", "smaug_stage.log"}
_NOT_MODEL |= {"smaug_stage_config.yml"}


def fingerprint(path: Path, previous: Fingerprint | None = None) -> Fingerprint:
    """The file's content hash; ``previous`` is reused while the file's stat is unchanged (as git does), so an
    unchanged large file costs one stat."""
    st = path.stat()
    stat = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if previous is not None and previous.stat == stat:
        return previous
    with open(path, "rb") as handle:
        return Fingerprint(sha256=hashlib.file_digest(handle, "sha256").hexdigest(), stat=stat)


def _files(folder: Path, recursive: bool) -> list[Path]:
    """A data folder's files (recursive) or a model folder's (top level, not logs or records); hidden files and
    the `cache-*.arrow` files datasets writes next to the data left out."""
    found = []
    for path in folder.rglob("*") if recursive else folder.iterdir():
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") for p in parts) or not path.is_file() or (not recursive and path.name in _NOT_MODEL):
            continue
        if not (path.name.startswith("cache-") and path.suffix == ".arrow"):
            found.append(path)
    return sorted(found)


def _local(value: Any) -> Path | None:
    """A recipe value naming a local file or folder."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    path = real_path(os.path.expanduser(value))
    local = path.exists() or value.startswith(("./", "../", "/", "~")) or value.endswith(DATA_SUFFIXES)
    return path if local else None


def consumed_paths(recipe: dict[str, Any]) -> list[tuple[str, Path]]:
    """(recipe key, local path) of every local file or folder a stage reads besides its base model: dataset
    paths and data_files, chat templates, tokenizer, DeepSpeed/FSDP configs, an adapter to start from."""
    found = []
    for key in ("datasets", "test_datasets"):
        for i, ds in enumerate(d for d in recipe.get(key) or [] if isinstance(d, dict)):
            files = ds.get("data_files")
            files = [files] if isinstance(files, str) else files if isinstance(files, list) else []
            path = _local(ds.get("path"))
            if path is not None:  # a local file or folder (a folder's data_files are inside it)
                found.append((f"{key}[{i}].path", path))
            else:  # a Hub dataset's data_files are files of that repo; `path: json` may name local ones
                found += [
                    (f"{key}[{i}].data_files[{j}]", real_path(f))
                    for j, f in enumerate(files)
                    if isinstance(f, str) and (f.startswith(("./", "../", "/")) or real_path(f).exists())
                ]
            template = _local(ds.get("chat_template_jinja"))
            if template is not None:
                found.append((f"{key}[{i}].chat_template_jinja", template))
    for key in ("deepspeed", "fsdp_config", "chat_template_jinja", "tokenizer_config", "lora_model_dir"):
        path = _local(recipe.get(key))
        if path is not None and path != real_path(str(recipe.get("base_model"))):
            found.append((key, path))
    return found


def missing_inputs(chain: Chain) -> list[str]:
    """Local files a stage reads, and local base models, that do not exist and no earlier step makes."""
    made = {*chain.prepare, *(s.output_dir for s in chain.stages), *(s.output_dir / "merged" for s in chain.stages)}
    problems = []
    for stage in chain.stages:
        where = stage.where(chain.name)
        for key, path in consumed_paths(stage.recipe):
            if not path.exists():
                problems.append(f"{where}: `{key}` names {path}, which does not exist; fix the path or create it")
        base = stage.base_path
        if base is not None and base not in made and not base.exists():
            problems.append(
                f"{where}: base_model {stage.recipe['base_model']} does not exist and no earlier stage of the chain "
                "writes it; fix base_model or create that model first"
            )
        elif base is not None and base.is_file():
            problems.append(
                f"{where}: base_model {stage.recipe['base_model']} is a file; it must name a model folder "
                "(config.json, weights, tokenizer) or a Hub id"
            )
    return problems


def stage_inputs(chain: Chain, stage: ChainStage, earlier: list[StageState], recorded: Inputs | None) -> Inputs:
    """What the stage consumes now: its base model's identity and the content hashes of its local files (those
    of a local base folder as `base_model/<file>`, so that moving the outputs changes nothing)."""
    old = recorded.files if recorded else {}
    files = {}
    for _, path in consumed_paths(stage.recipe):
        for item in _files(path, recursive=True) if path.is_dir() else [path] if path.is_file() else []:
            files[rel(item)] = fingerprint(item, old.get(rel(item)))
    base = stage.base_path
    if base is None:
        identity = f"{stage.recipe['base_model']} (revision {stage.recipe.get('revision_of_model') or 'main'})"
    elif made_by := [
        (s, st) for s, st in zip(chain.stages, earlier) if base in (s.output_dir, s.output_dir / "merged")
    ]:
        ((other, state),) = made_by
        identity = f"stage {other.name}, " + (f"run {state.run_id}" if state.reusable else _NOT_DONE)
    else:
        identity = "a local folder"
        if base.is_dir():
            files |= {
                f"base_model/{p.name}": fingerprint(p, old.get(f"base_model/{p.name}")) for p in _files(base, False)
            }
        else:  # gone: what the stage made from it stands, nothing to compare
            files |= {k: v for k, v in old.items() if k.startswith("base_model/")}
    return Inputs(base=identity, files=files)


def prepared_folder(stage: ChainStage, inputs: Inputs) -> Path | None:
    """`<dataset_prepared_path>/inputs-<digest>`: axolotl keys its prepared (tokenized) data by the dataset
    config and the tokenizer's path, not by file contents, so an edited data file or a retrained base stage
    would reuse stale tokens. A folder per set of inputs keeps sharing safe. None while the base stage has not
    run."""
    if _NOT_DONE in inputs.base:
        return None
    content = {"base": inputs.base, "files": {k: v.sha256 for k, v in inputs.files.items()}}
    return (
        stage.prepared_root / f"inputs-{hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]}"
    )


def assess_stage(chain: Chain, stage: ChainStage, earlier: list[StageState]) -> StageState:
    """The stage's state and next step (`training.state.assess`), given the states of the stages before it."""
    return assess(
        stage.output_dir,
        stage.digest,
        stage.settings,
        lambda recorded: stage_inputs(chain, stage, earlier, recorded),
        rerun=chain.rerun(),
        adapter=bool(stage.recipe.get("adapter")),
        merged=stage.merge_lora,
    )


def assess_chain(chain: Chain) -> list[StageState]:
    states: list[StageState] = []
    for stage in chain.stages:
        states.append(assess_stage(chain, stage, states))
    return states


def new_record(chain: Chain, stage: ChainStage, earlier: list[StageState]) -> StageRecord:
    """The record of a new run of the stage: its recipe and what it consumes now."""
    inputs = stage_inputs(chain, stage, earlier, None)
    return StageRecord(
        recipe=stage.name, sha256=stage.digest, settings=stage.settings, inputs=inputs, output_dir=str(stage.output_dir)
    )
