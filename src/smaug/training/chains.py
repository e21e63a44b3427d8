"""Stage chains: run a list of axolotl recipes in order (`make smaug-34b` = `smaug chain run smaug-34b`).

recipes/chains.yaml names the stages of each chain and the hardware it needs. The plan is refused before
anything runs (also in `--dry-run`) when stages share or nest output folders, a stage starts from its own
output or a later stage's (a cycle), or a setting would reverse or break training (β <= 0, NaN/inf, a
non-positive step count, batch size or learning rate, a port out of range…); every stage is validated with
axolotl's own validator (and the DPOP plugin's) before the first one trains.

For every stage, one function (`training.state.assess`, through `assess_chain`) decides what it is — done,
stale (its recipe or what it consumed changed since), finished but unmarked, resumable, new — and both the
run and `smaug chain status` act on that. A run
  - takes a lock on every folder it writes (`training.lock`), so a second run on the same outputs stops at once;
  - skips done stages, and stops before any training if a stage is stale (with the command to retrain it);
  - finishes a stage whose training had finished (killed before its done-marker) without training again;
  - otherwise runs `axolotl train RECIPE --launcher accelerate -- ...` through `training.runner`, resuming a
    killed stage from its last complete checkpoint (half-written ones are set aside first);
  - merges a LoRA stage (`axolotl merge-lora` into `<output_dir>/merged`) before marking it done, so a later
    stage, `make eval` and `smaug release card` start from full weights;
  - writes a done-marker recording what the stage consumed (`training.state`).
On several nodes (NNODES > 1, outputs on shared storage, e.g. `scripts/slurm/smaug.sbatch`) every node runs the
same chain; only node 0 sets checkpoints aside, merges and writes records and done-markers, and the other
nodes wait for node 0's marker before they go on to the next stage.
The chain adds to each run, through axolotl's own config keys on the command line (the recipes stay as they
are, and these keys are not part of a recipe's hash): TensorBoard logging under the stage's folder, W&B or
MLflow when WANDB_PROJECT or MLFLOW_TRACKING_URI is set, and a prepared-dataset folder per set of inputs.
Before any GPU time, `training.preflight` compares the chain's `hardware:` with the GPUs torch finds;
`--dry-run` prints the plan, the exact commands and a per-GPU memory estimate (`training.memory`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smaug.common.errors import UserError
from smaug.common.files import atomic_directory, copy_file_atomic, remove_stale_temps
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, rel, repo_path
from smaug.training import lock, memory, runner, template_tokens
from smaug.training.preflight import hardware_text, preflight
from smaug.training.recipes import is_preference, load_recipe, resolve_recipe_path, write_derived_recipe
from smaug.training.state import (
    DONE_MARKER,
    INPUTS_RECORD,
    StageState,
    assess,
    complete_checkpoints,
    file_fingerprint,
    folder_files,
    new_run_id,
    recipe_hash,
    set_aside_incomplete_checkpoints,
    stage_record,
    weight_files,
    weights_problem,
    write_done_marker,
    write_inputs_record,
)

CHAINS_FILE = RECIPES_DIR / "chains.yaml"
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "outputs"
STAGE_LOG = "smaug_stage.log"
RESOLVED_CONFIG = "smaug_stage_config.yml"
# Recipe keys that hold paths under the output root (rebased by --output-root).
_PATH_KEYS = ("output_dir", "base_model", "dataset_prepared_path", "lora_model_dir", "tokenizer_config")
_OUTPUT_PREFIXES = ("./outputs/", "outputs/")
# axolotl's own default when a recipe sets no dataset_prepared_path (relative to where it runs: the repo root).
_AXOLOTL_PREPARED_DEFAULT = "last_run_prepared"
# Experiment-tracking keys: where metrics go, not how the model trains; left out of a recipe's hash.
_TRACKING_PREFIXES = ("wandb_", "mlflow_", "hf_mlflow_", "comet_", "trackio_")
_TRACKING_KEYS = {"use_tensorboard", "use_wandb", "use_mlflow", "use_comet", "use_trackio"}
PENDING_PREPARED = "inputs-PENDING"
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".jinja")


def training_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe without its experiment-tracking keys: what a stage's hash and records cover."""
    return {k: v for k, v in recipe.items() if k not in _TRACKING_KEYS and not k.startswith(_TRACKING_PREFIXES)}


# --------------------------------------------------------------------------------------------------------------
# plan


@dataclass
class Launch:
    """How the stages are started: accelerate's multi-GPU / multi-node arguments, from Make's variables."""

    num_gpus: int  # per node
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.num_gpus * self.nnodes

    @classmethod
    def from_env(cls, hardware: dict[str, Any], env: dict[str, str] | None = None) -> "Launch":
        env = dict(os.environ if env is None else env)

        def number(name: str, default: int, low: int = 1, high: int | None = None) -> int:
            raw = env.get(name) or ""
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise UserError(f"{name}={raw!r} is not a whole number; set e.g. {name}={default}") from None
            if value < low or (high is not None and value > high):
                raise UserError(f"{name}={raw!r} is out of range ({low}..{high if high is not None else ''}); "
                                f"set e.g. {name}={default}")
            return value

        nnodes = number("NNODES", 1)
        wanted = int(hardware.get("gpus") or 1) if hardware.get("accelerator") == "cuda" else 1
        if not env.get("NUM_GPUS") and hardware.get("accelerator") == "cuda" and wanted % nnodes:
            raise UserError(f"NNODES={nnodes} cannot give the {wanted} GPUs in total this chain is sized for "
                            f"({hardware.get('label', '')}): use a node count that divides {wanted}, or set "
                            f"NUM_GPUS (per node) so that NUM_GPUS x NNODES = {wanted}")
        launch = cls(
            num_gpus=number("NUM_GPUS", max(1, wanted // nnodes)),
            nnodes=nnodes,
            node_rank=number("NODE_RANK", 0, low=0),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=number("MASTER_PORT", 29500, low=1, high=65535),
        )
        if not launch.master_addr or any(c.isspace() or c in "/@" for c in launch.master_addr):
            raise UserError(f"MASTER_ADDR={launch.master_addr!r} is not a host name or IP address; set it to node "
                            "0's address, e.g. MASTER_ADDR=10.0.0.1")
        if launch.node_rank >= launch.nnodes:
            raise UserError(f"NODE_RANK={launch.node_rank} but NNODES={launch.nnodes}: ranks are 0..NNODES-1")
        return launch


@dataclass
class ChainStage:
    index: int
    recipe_path: Path  # the recipe as committed
    recipe: dict[str, Any]  # with paths rebased onto the output root
    output_dir: Path
    run_config: Path  # what `axolotl train` gets: the recipe itself, or a rebased copy in output_dir
    rebased: bool
    merge_lora: bool = False  # a later stage starts from this stage's merged weights
    committed: dict[str, Any] = field(default_factory=dict)  # the recipe as written (paths not rebased)

    @property
    def name(self) -> str:
        return rel(self.recipe_path)

    @property
    def marker(self) -> Path:
        return self.output_dir / DONE_MARKER

    @property
    def digest(self) -> str:
        """The hash of the recipe as committed, tracking keys left out: moving the outputs (--output-root, or
        the folder itself) does not make a stage stale."""
        return recipe_hash(training_settings(self.committed or self.recipe))

    @property
    def base_path(self) -> Path | None:
        """The base model as a local folder, or None for a Hub id."""
        base = self.recipe["base_model"]
        return _real(repo_path(str(base))) if _looks_local(base) else None

    @property
    def prepared_root(self) -> Path:
        return _real(repo_path(str(self.recipe.get("dataset_prepared_path") or _AXOLOTL_PREPARED_DEFAULT)))


@dataclass
class Chain:
    name: str
    description: str
    hardware: dict[str, Any]
    stages: list[ChainStage]
    output_root: Path
    prepare: list[dict[str, Any]] = field(default_factory=list)
    rebased: bool = False

    def rerun(self) -> str:
        """The command that runs this chain again, as the user would type it."""
        return f"smaug chain run {self.name}" + (f" --output-root {self.output_root}" if self.rebased else "")


def load_chains(path: Path = CHAINS_FILE) -> dict[str, dict[str, Any]]:
    try:
        chains = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{rel(path)}: cannot read the chain definitions ({err})") from None
    if not isinstance(chains, dict):
        raise UserError(f"{rel(path)}: must map chain names to {{stages: [...], hardware: {{...}}}}")
    for name, spec in chains.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
            raise UserError(f"{rel(path)}: chain {name!r} needs a non-empty `stages:` list of recipe files")
        if not all(isinstance(entry, str) and entry for entry in spec["stages"]):
            raise UserError(f"{rel(path)}: chain {name!r}: every entry of `stages:` must be a recipe file name")
        hardware = spec.get("hardware") or {}
        where = f"{rel(path)}: chain {name!r}: hardware"
        if not isinstance(hardware, dict):
            raise UserError(f"{where} must be a mapping ({{accelerator: cuda, gpus: 8, min_gpu_memory_gib: 75}})")
        if hardware.get("accelerator", "cuda") not in ("cuda", "cpu"):
            raise UserError(f"{where}.accelerator is {hardware['accelerator']!r}; use cuda or cpu")
        gpus, gib = hardware.get("gpus"), hardware.get("min_gpu_memory_gib")
        if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1):
            raise UserError(f"{where}.gpus is {gpus!r}; it must be the whole number of GPUs in total (>= 1)")
        if gib is not None and (isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib)
                                or gib <= 0):
            raise UserError(f"{where}.min_gpu_memory_gib is {gib!r}; it must be a number of GiB > 0")
    return chains


def _rebase(value: Any, output_root: Path) -> Any:
    if isinstance(value, str):
        for prefix in _OUTPUT_PREFIXES:
            if value.startswith(prefix):
                return str(output_root / value[len(prefix):])
    return value


def _real(path: Path) -> Path:
    """The path with symlinks resolved, so that two spellings of one folder compare equal."""
    return Path(os.path.realpath(path))


def plan_chain(name: str, output_root: Path | None = None, chains_file: Path = CHAINS_FILE) -> Chain:
    chains = load_chains(chains_file)
    if name not in chains:
        raise UserError(f"no chain {name!r} in {rel(chains_file)}; chains: {', '.join(chains)}")
    spec = chains[name]
    rebase = output_root is not None and _real(Path(output_root)) != _real(DEFAULT_OUTPUT_ROOT)
    root = _real(Path(output_root)) if output_root is not None else DEFAULT_OUTPUT_ROOT

    stages: list[ChainStage] = []
    for index, entry in enumerate(spec["stages"]):
        path = resolve_recipe_path(entry)
        recipe = load_recipe(path)
        where = f"{rel(path)} (stage {index + 1} of chain {name!r})"
        for key in ("base_model", "output_dir"):
            if not recipe.get(key) or not isinstance(recipe[key], str):
                raise UserError(f"{where}: `{key}` is missing (it must name a folder or a Hub model id)")
        if not recipe.get("save_steps") or recipe.get("auto_resume_from_checkpoints") is not True:
            raise UserError(f"{where}: a chain stage must be resumable: set `save_steps:` and "
                            "`auto_resume_from_checkpoints: true`")
        committed = recipe
        if rebase:
            recipe = {k: (_rebase(v, root) if k in _PATH_KEYS else v) for k, v in recipe.items()}
        output_dir = _real(repo_path(recipe["output_dir"]))
        run_config = output_dir / RESOLVED_CONFIG if rebase else path
        stages.append(ChainStage(index, path, recipe, output_dir, run_config, rebase, committed=committed,
                                 merge_lora=bool(recipe.get("adapter"))))

    # A stage that starts from an earlier LoRA stage must start from its merged weights.
    for later in stages:
        base = later.base_path
        for earlier in stages[: later.index]:
            if base is None or not earlier.recipe.get("adapter"):
                continue
            if base == earlier.output_dir:
                raise UserError(f"{later.name}: base_model points at the LoRA adapter folder of {earlier.name}; "
                                f"point it at {earlier.recipe['output_dir']}/merged (the chain merges it)")

    prepare = []
    for step in spec.get("prepare") or []:
        if isinstance(step, dict) and isinstance(step.get("tiny_model"), str) and step["tiny_model"]:
            target = _rebase(step["tiny_model"], root) if rebase else step["tiny_model"]
            prepare.append({"tiny_model": _real(repo_path(target))})
        else:
            raise UserError(f"{rel(chains_file)}: chain {name!r}: unknown prepare step {step!r} (known: tiny_model)")
    chain = Chain(name, spec.get("description", ""), spec.get("hardware") or {}, stages, root, prepare, rebase)
    _check_folders(chain)
    return chain


def _looks_local(value: Any) -> bool:
    text = str(value)
    return text.startswith(("./", "../", "/", "~")) or Path(text).exists() or (REPO_ROOT / text).exists()


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_folders(chain: Chain) -> None:
    """Refuse a plan whose stages would write over each other or read what they or a later stage write."""
    def who(stage: ChainStage) -> str:
        return f"stage {stage.index + 1} ({stage.name})"

    for a in chain.stages:
        for b in chain.stages[a.index + 1:]:
            if _within(a.output_dir, b.output_dir) or _within(b.output_dir, a.output_dir):
                how = "the same output folder" if a.output_dir == b.output_dir else "nested output folders"
                raise UserError(f"chain {chain.name!r}: {who(a)} and {who(b)} write to {how} ({a.output_dir}, "
                                f"{b.output_dir}): one would resume from or overwrite the other's checkpoints and "
                                "model; give each stage its own `output_dir`")
    for stage in chain.stages:
        base = stage.base_path
        if base is not None:
            if _within(base, stage.output_dir):
                raise UserError(f"chain {chain.name!r}: {who(stage)} starts from its own output folder "
                                f"(base_model {stage.recipe['base_model']} is in output_dir {stage.output_dir}); "
                                "point base_model at the model it should start from")
            if _within(stage.output_dir, base):
                raise UserError(f"chain {chain.name!r}: {who(stage)} writes inside the model folder it starts from "
                                f"(output_dir {stage.output_dir} is in base_model {base}); give it its own folder")
            for later in chain.stages[stage.index + 1:]:
                if _within(base, later.output_dir):
                    raise UserError(f"chain {chain.name!r}: {who(stage)} starts from {base}, the output of "
                                    f"{who(later)}, which runs after it (a cycle); order the stages in "
                                    f"{rel(CHAINS_FILE)} so that {later.name} comes first, or fix base_model")
        if stage.recipe.get("dataset_prepared_path"):
            for other in chain.stages:
                if _within(stage.prepared_root, other.output_dir):
                    raise UserError(f"chain {chain.name!r}: the dataset_prepared_path of {who(stage)} "
                                    f"({stage.prepared_root}) is inside the output folder of {who(other)}; moving "
                                    "that folder aside to retrain it would take the prepared data along: put it "
                                    "outside every output_dir")
    for folder in [stage.output_dir for stage in chain.stages] + [step["tiny_model"] for step in chain.prepare]:
        blocker = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"chain {chain.name!r}: {blocker} is a file, where the chain needs the folder {folder}; "
                            "move the file, or choose another output_dir / --output-root")
    for step in chain.prepare:
        for stage in chain.stages:
            if _within(step["tiny_model"], stage.output_dir) or _within(stage.output_dir, step["tiny_model"]):
                raise UserError(f"chain {chain.name!r}: the prepared model {step['tiny_model']} and the output "
                                f"folder of {who(stage)} overlap; keep them apart")


# --------------------------------------------------------------------------------------------------------------
# settings: what axolotl accepts but would reverse or break training, then axolotl's own validation

# key -> (lowest, lowest allowed?, highest, highest allowed?) for numbers a recipe may set
_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "max_steps": (1, True, None, False),
    "micro_batch_size": (1, True, None, False),
    "eval_batch_size": (1, True, None, False),
    "gradient_accumulation_steps": (1, True, None, False),
    "sequence_len": (1, True, None, False),
    "save_steps": (0, False, None, False),
    "logging_steps": (0, False, None, False),
    "eval_steps": (0, False, None, False),
    "save_total_limit": (1, True, None, False),
    "num_epochs": (0, False, None, False),
    "learning_rate": (0, False, None, False),
    "warmup_steps": (0, True, None, False),
    "warmup_ratio": (0, True, 1, True),
    "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, True, None, False),
    "adam_beta1": (0, True, 1, False),
    "adam_beta2": (0, True, 1, False),
    "adam_epsilon": (0, False, None, False),
    "lora_r": (1, True, None, False),
    "lora_alpha": (0, False, None, False),
    "lora_dropout": (0, True, 1, False),
    "val_set_size": (0, True, None, False),
}  # dpop_lambda is the DPOP plugin's to check (axolotl_dpop.args), through validate_stages
_WHOLE = {"max_steps", "micro_batch_size", "eval_batch_size", "gradient_accumulation_steps", "sequence_len",
          "save_total_limit", "warmup_steps", "lora_r"}


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _non_finite(value: Any, path: str = "") -> tuple[str, Any] | None:
    """The first NaN/inf float anywhere in a (nested) config, as (key path, value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path and not str(key).startswith("[") else f"{path}{key}")
        if found:
            return found
    return None


def check_settings(chain: Chain) -> None:
    """Our own checks, on every stage before anything runs: the values axolotl accepts that reverse or break
    training. One error naming the recipe, the key and what to do."""
    for stage in chain.stages:
        recipe, where = stage.recipe, f"{stage.name} (stage {stage.index + 1} of chain {chain.name!r})"
        bad = _non_finite(recipe)
        if bad:
            raise UserError(f"{where}: `{bad[0]}` is {bad[1]}; training settings must be finite numbers")
        for key, (low, low_ok, high, high_ok) in _RANGES.items():
            if key not in recipe or recipe[key] is None or (key == "max_steps" and recipe[key] == -1):
                continue  # max_steps: -1 is transformers' "unset" (train by num_epochs)
            value, number = recipe[key], _as_number(recipe[key])
            if number is None or (key in _WHOLE and not float(number).is_integer()):
                kind = "a whole number" if key in _WHOLE else "a number"
                raise UserError(f"{where}: `{key}: {value!r}` is not {kind}")
            if not math.isfinite(number):
                raise UserError(f"{where}: `{key}` is {value!r}; training settings must be finite numbers")
            too_low = low is not None and (number < low or (number == low and not low_ok))
            too_high = high is not None and (number > high or (number == high and not high_ok))
            if too_low or too_high:
                span = (f"{'>=' if low_ok else '>'} {low:g}" if low is not None else "") + \
                       (" and " if low is not None and high is not None else "") + \
                       (f"{'<=' if high_ok else '<'} {high:g}" if high is not None else "")
                raise UserError(f"{where}: `{key}: {value!r}` is out of range; it must be {span}")
        if is_preference(recipe):
            beta = _as_number(recipe.get("rl_beta"))
            if "rl_beta" in recipe and (beta is None or not math.isfinite(beta) or beta <= 0):
                raise UserError(f"{where}: `rl_beta: {recipe.get('rl_beta')!r}` must be a number > 0 (the paper "
                                "uses 0.3); beta <= 0 reverses or removes the preference objective")


def validation_capabilities(chain: Chain, launch: Launch) -> dict[str, Any]:
    from smaug.training.recipes import CPU_CAPABILITIES, H100_NODE_CAPABILITIES

    if chain.hardware.get("accelerator") == "cpu":
        return CPU_CAPABILITIES
    return {**H100_NODE_CAPABILITIES, "n_gpu": launch.world_size, "n_node": launch.nnodes}


def validate_stages(chain: Chain, launch: Launch, tracking: dict[int, dict[str, Any]],
                    stages: list[ChainStage] | None = None) -> dict[int, Any]:
    """axolotl's own validation (with the DPOP plugin's) of each stage as it will run, before any stage trains.
    Returns the validated configs by stage index."""
    from smaug.training.recipes import validate_offline

    capabilities = validation_capabilities(chain, launch)
    validated = {}
    for stage in stages if stages is not None else chain.stages:
        where = f"{stage.name} (stage {stage.index + 1} of chain {chain.name!r})"
        cfg = validate_offline({**stage.recipe, **tracking.get(stage.index, {})}, capabilities=capabilities,
                               name=where)
        bad = _non_finite(dict(cfg))
        if bad:
            raise UserError(f"{where}: `{bad[0]}` becomes {bad[1]} in axolotl's config; training settings must "
                            "be finite numbers")
        _check_names(cfg, where)
        validated[stage.index] = cfg
    return validated


# axolotl's own schedulers besides transformers' (axolotl.core.builders.base: `alternate_lr_scheduler_type`)
_AXOLOTL_SCHEDULERS = {"one_cycle", "rex"}


def _check_names(cfg: Any, where: str) -> None:
    """Names axolotl's validation lets through as free strings but the trainer rejects only when it is built,
    after the earlier stages have trained."""
    from axolotl.utils.schemas.enums import CustomSupportedOptimizers
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for key, known in (("optimizer", {o.value for o in OptimizerNames} | {o.value for o in CustomSupportedOptimizers}),
                       ("lr_scheduler", {s.value for s in SchedulerType} | _AXOLOTL_SCHEDULERS)):
        value = cfg.get(key)
        value = getattr(value, "value", value)
        if value is not None and value not in known:
            raise UserError(f"{where}: `{key}: {value}` is not one transformers or axolotl knows; use one of "
                            f"{', '.join(sorted(known))}")


# --------------------------------------------------------------------------------------------------------------
# what each stage consumes


def _local_path(value: Any) -> Path | None:
    """A recipe value naming a local file or folder (relative to the repository root, where axolotl runs)."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    path = repo_path(os.path.expanduser(value))
    if path.exists() or value.startswith(("./", "../", "/", "~")) or value.endswith(_DATA_SUFFIXES):
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
        if path is not None and _real(path) != _real(repo_path(str(recipe.get("base_model")))):
            found.append((key, path))
    return found


def missing_inputs(chain: Chain) -> list[str]:
    """Local files a stage reads, and local base models, that do not exist and no earlier step makes."""
    made = {step["tiny_model"] for step in chain.prepare}
    for stage in chain.stages:
        made |= {stage.output_dir, stage.output_dir / "merged"}
    problems = []
    for stage in chain.stages:
        where = f"{stage.name} (stage {stage.index + 1} of chain {chain.name!r})"
        for key, path in consumed_paths(stage.recipe):
            if not path.exists():
                problems.append(f"{where}: `{key}` names {path}, which does not exist; fix the path or create it")
        base = stage.base_path
        if base is not None and base not in made and not base.exists():
            problems.append(f"{where}: base_model {stage.recipe['base_model']} does not exist and no earlier "
                            "stage of the chain writes it; fix base_model or create that model first")
        elif base is not None and base.is_file():
            problems.append(f"{where}: base_model {stage.recipe['base_model']} is a file; it must name a model "
                            "folder (config.json, weights, tokenizer) or a Hub id")
    return problems


def stage_inputs(chain: Chain, stage: ChainStage, earlier: list[StageState],
                 previous: dict[str, Any] | None) -> dict[str, Any]:
    """What the stage consumes now: content hashes of its local files and its base model's identity."""
    previous = previous or {}
    old_files = previous.get("files") or {}
    files = {}
    for _, path in consumed_paths(stage.recipe):
        for item in (folder_files(path, recursive=True) if path.is_dir() else [path] if path.is_file() else []):
            label = rel(item)
            files[label] = file_fingerprint(item, old_files.get(label))
    return {"files": files, "base": _base_identity(chain, stage, earlier, previous.get("base") or {})}


def _base_identity(chain: Chain, stage: ChainStage, earlier: list[StageState],
                   previous: dict[str, Any]) -> dict[str, Any]:
    base = stage.base_path
    if base is None:
        return {"kind": "hub", "id": str(stage.recipe["base_model"]), "revision": stage.recipe.get("revision_of_model")}
    for other, state in zip(chain.stages[: stage.index], earlier):
        if base in (other.output_dir, other.output_dir / "merged"):
            return {"kind": "stage", "stage": other.name, "path": str(base),
                    "run_id": state.run_id if state.reusable else None}
    if not base.is_dir():  # gone: what the stage made from it stands; nothing to compare
        return {"kind": "folder", "path": str(base), "files": None}
    old = previous.get("files") or {} if previous.get("kind") == "folder" else {}
    return {"kind": "folder", "path": str(base),
            "files": {p.name: file_fingerprint(p, old.get(p.name)) for p in folder_files(base, recursive=False)}}


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


# --------------------------------------------------------------------------------------------------------------
# the state of every stage, and what the next run does with it


def assess_chain(chain: Chain) -> list[StageState]:
    states: list[StageState] = []
    for stage in chain.stages:
        states.append(assess_stage(chain, stage, states))
    return states


def assess_stage(chain: Chain, stage: ChainStage, earlier: list[StageState]) -> StageState:
    return assess(stage.output_dir, stage.digest, _json_settings(stage),
                  lambda previous: stage_inputs(chain, stage, earlier, previous),
                  adapter=bool(stage.recipe.get("adapter")), merged=stage.merge_lora)


def _json_settings(stage: ChainStage) -> dict[str, Any]:
    return json.loads(json.dumps(training_settings(stage.committed or stage.recipe), default=str))


@dataclass
class NextStep:
    text: str  # what the next run does with the stage
    blocking: bool = False  # it stops the run before any training
    fix: str = ""  # what the user can do


def next_step(chain: Chain, stage: ChainStage, state: StageState) -> NextStep:
    out, kind = stage.output_dir, state.kind
    retrain = f"to retrain it: mv {out} {out}.stale-{_stamp()} && {chain.rerun()}"
    if kind == "done":
        return NextStep("skip (done)")
    if kind == "stale":
        return NextStep("stop before any training: stale", True, f"{retrain} (or undo the change)")
    if kind == "unreadable":
        if state.bad_file is not None and state.bad_file.name == INPUTS_RECORD:
            return NextStep("stop before any training: unreadable run record", True,
                            f"delete it (rm {state.bad_file}) and run again: the checkpoints are then taken as "
                            f"they are; or {retrain}")
        return NextStep("stop before any training: unreadable done-marker", True,
                        f"delete it (rm {state.bad_file}) and run again: the chain re-checks the folder from its "
                        f"checkpoints (finishing without training if training had finished); or {retrain}")
    if kind in ("weights-missing", "finished"):
        done = "then skip" if kind == "weights-missing" else "then write the done-marker"
        if state.weights is None:
            return NextStep("finish without training: write the done-marker (training had finished at "
                            f"{state.checkpoint.name if state.checkpoint else '?'})")
        if state.merge_missing:
            return NextStep(f"run axolotl merge-lora (the merged weights are missing: {state.weights}), {done}")
        if state.restore_from is not None:
            return NextStep(f"copy the final weights from {state.restore_from.name} (training had finished "
                            f"there; {state.weights}), {done}; no training")
        return NextStep(f"stop before any training: the final weights are incomplete ({state.weights})", True,
                        _weights_fix(chain, stage, state, retrain))
    if kind == "resumable":
        return NextStep(f"resume from {state.checkpoint.name} (step {state.step} of {state.max_steps})")
    if kind == "occupied":
        return NextStep("stop before any training: the folder holds a model", True,
                        f"move it aside to train this stage there: mv {out} {out}.old-{_stamp()} && {chain.rerun()}")
    return NextStep("train from the start")


def _weights_fix(chain: Chain, stage: ChainStage, state: StageState, retrain: str) -> str:
    ck, out = state.checkpoint, stage.output_dir
    if ck is not None and (ck / "zero_to_fp32.py").is_file():
        return (f"its last checkpoint holds DeepSpeed shards only: write the weights with "
                f"`python {ck}/zero_to_fp32.py {ck} {out} --safe_serialization`, then {chain.rerun()}; or {retrain}")
    if ck is not None and any(ck.glob("pytorch_model_fsdp*")):
        return (f"its last checkpoint holds FSDP shards only: merge them into {out} with axolotl's "
                f"`merge-sharded-fsdp-weights`, then {chain.rerun()}; or {retrain}")
    if stage.recipe.get("load_best_model_at_end"):
        return (f"with load_best_model_at_end the final model is the best checkpoint: copy its weights into {out}, "
                f"then {chain.rerun()}; or {retrain}")
    if ck is None:
        return f"no checkpoint is left to restore them from: put the weights back into {out}, or {retrain}"
    return f"training did not finish at {ck.name}: put the weights back into {out}, or {retrain}"


def _stamp() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def state_text(state: StageState) -> str:
    kind = state.kind
    if kind == "done":
        text = "done"
    elif kind == "stale":
        text = f"stale: {state.detail}"
    elif kind == "unreadable":
        text = f"unreadable: {state.detail}"
    elif kind == "weights-missing":
        text = f"done, but the final weights are incomplete: {state.weights}"
    elif kind == "finished":
        text = f"finished at {state.checkpoint.name if state.checkpoint else '?'} but not marked done"
        text += f" (final weights: {state.weights})" if state.weights else " (final weights complete)"
    elif kind == "resumable":
        text = f"resumable from {state.checkpoint.name if state.checkpoint else '?'}"
    elif kind == "occupied":
        text = f"occupied: {state.detail}"
    else:
        text = "not started"
    return text + (f" [{state.note}]" if state.note else "")


def _blocked_error(chain: Chain, states: list[StageState], steps: list[NextStep]) -> UserError:
    lines = [f"{stage.name} (stage {stage.index + 1} of chain {chain.name!r}, {stage.output_dir}) is "
             f"{state_text(state)}; {step.fix}" for stage, state, step in zip(chain.stages, states, steps)
             if step.blocking]
    return UserError("\n".join(lines) + "\nNothing was trained.")


# --------------------------------------------------------------------------------------------------------------
# commands


def tracking_settings(chain: Chain, stage: ChainStage, env: dict[str, str]) -> dict[str, Any]:
    """axolotl config keys for experiment tracking, added by the chain (the recipes stay as they are): TensorBoard
    under the stage's folder by default (local; SMAUG_TENSORBOARD=0 turns it off), W&B when WANDB_PROJECT is set,
    MLflow when MLFLOW_TRACKING_URI is set. A key the recipe sets itself is left alone."""
    recipe, short = stage.recipe, Path(stage.name).stem
    settings: dict[str, Any] = {}
    if env.get("SMAUG_TENSORBOARD", "1") != "0" and "use_tensorboard" not in recipe:
        settings["use_tensorboard"] = True
    if env.get("WANDB_PROJECT") and "wandb_project" not in recipe:
        _need_package("wandb", "WANDB_PROJECT")
        settings["wandb_project"] = env["WANDB_PROJECT"]
        for var, key in (("WANDB_ENTITY", "wandb_entity"), ("WANDB_MODE", "wandb_mode")):
            if env.get(var) and key not in recipe:
                settings[key] = env[var]
        if "wandb_name" not in recipe:
            settings["wandb_name"] = env.get("WANDB_NAME") or f"{chain.name}/{short}"
    if env.get("MLFLOW_TRACKING_URI") and "mlflow_tracking_uri" not in recipe:
        _need_package("mlflow", "MLFLOW_TRACKING_URI")
        settings["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]
        if "mlflow_experiment_name" not in recipe:  # axolotl logs to MLflow only when an experiment is named
            settings["mlflow_experiment_name"] = env.get("MLFLOW_EXPERIMENT_NAME") or chain.name
        if "mlflow_run_name" not in recipe:
            settings["mlflow_run_name"] = f"{chain.name}/{short}"
    return settings


def _need_package(package: str, variable: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise UserError(f"{variable} is set but the `{package}` package is not installed, and axolotl logs to it "
                        f"through that package: pip install {package} (or unset {variable})")


def train_command(stage: ChainStage, launch: Launch, accelerator: str,
                  overrides: dict[str, Any] | None = None) -> list[str]:
    config = rel(stage.run_config)
    if accelerator == "cpu":
        return runner.train_command(config, overrides=overrides)
    args = ["--num_processes", str(launch.world_size), "--num_machines", str(launch.nnodes),
            "--machine_rank", str(launch.node_rank), "--main_process_ip", launch.master_addr,
            "--main_process_port", str(launch.master_port)]
    if stage.recipe.get("deepspeed"):
        if launch.world_size > 1:
            # accelerate's DeepSpeed launcher (--multi_gpu would wrap the ZeRO-3 model in DDP)
            args.append("--use_deepspeed")
        if launch.nnodes > 1:
            # one launcher per node (torchrun, started on every node like this chain), not DeepSpeed's
            # default pdsh/ssh launcher that starts all nodes from node 0
            args += ["--deepspeed_multinode_launcher", "standard"]
    elif launch.world_size > 1:
        args.append("--multi_gpu")
    return runner.train_command(config, launcher_args=args, overrides=overrides)


def merge_command(stage: ChainStage) -> list[str]:
    return runner.merge_command(rel(stage.run_config))


def stage_env(stage: ChainStage, tracking: dict[str, Any] | None = None) -> dict[str, str]:
    # The committed recipe, for provenance when axolotl gets a rebased copy; W&B files under the stage folder.
    extra = {"SMAUG_RECIPE": stage.name}
    if (tracking or {}).get("wandb_project") and not os.environ.get("WANDB_DIR"):
        extra["WANDB_DIR"] = str(stage.output_dir)
    return runner.axolotl_env(**extra)


# --------------------------------------------------------------------------------------------------------------
# dry run and status


def host_ram_check(hardware: dict[str, Any], est: memory.Estimate) -> list[str]:
    """The estimate's host RAM per node next to what recipes/chains.yaml states for the chain."""
    need_gb = est.host_gib * memory.GIB / 1e9
    stated = hardware.get("host_ram_gb")
    if stated is None:
        verdict = "recipes/chains.yaml states no host_ram_gb for this chain: add it"
    elif need_gb <= float(stated):
        verdict = f"recipes/chains.yaml states {stated:g} GB: ok"
    else:
        verdict = f"MORE than the {stated:g} GB recipes/chains.yaml states: correct host_ram_gb there"
    lines = [f"    host RAM per node for offloaded states (estimate): {need_gb:.0f} GB ({est.host_gib:.0f} GiB); "
             f"{verdict}"]
    lines += [f"      {what:<76s} {gib * memory.GIB / 1e9:7.0f} GB" for what, gib in est.host_rows]
    return lines


def describe(chain: Chain, launch: Launch, tracking: dict[int, dict[str, Any]] | None = None,
             states: list[StageState] | None = None) -> str:
    tracking = tracking or {}
    states = states or assess_chain(chain)
    hw = chain.hardware
    lines = [f"chain {chain.name}: {chain.description}",
             f"hardware: {hardware_text(hw)}"
             + (f" ({hw.get('gpus')} GPUs in total, >= {hw.get('min_gpu_memory_gib')} GiB each)"
                if hw.get("accelerator") == "cuda" else ""),
             f"launch: NUM_GPUS={launch.num_gpus} NNODES={launch.nnodes} NODE_RANK={launch.node_rank} "
             f"MASTER_ADDR={launch.master_addr} MASTER_PORT={launch.master_port} (world size {launch.world_size})",
             f"output root: {chain.output_root}"]
    if hw.get("accelerator") == "cuda" and launch.world_size != int(hw.get("gpus") or 1):
        lines.append(f"WARNING: NUM_GPUS x NNODES = {launch.world_size}, but the recipes are sized for "
                     f"{hw.get('gpus')} GPUs in total (the run's preflight stops on fewer)")
    for step in chain.prepare:
        lines.append(f"prepare: smaug showcase tiny-model {step['tiny_model']}"
                     + ("  [exists, skipped]" if (step["tiny_model"] / "config.json").is_file() else ""))
    shapes: dict[Path, memory.ModelShape | None] = {}
    for stage, state in zip(chain.stages, states):
        recipe = stage.recipe
        kind = recipe.get("rl") or "sft"
        if recipe.get("dpo_loss_type"):
            kind += f" ({', '.join(recipe['dpo_loss_type'])})"
        if recipe.get("adapter"):
            kind += f", {recipe['adapter']}"
        step = next_step(chain, stage, state)
        lines += ["", f"stage {stage.index + 1}/{len(chain.stages)}: {stage.name}  [{kind}]  ({state_text(state)}: "
                      f"{'STOPS: ' + step.fix if step.blocking else step.text})",
                  f"  base_model: {recipe['base_model']}",
                  f"  output_dir: {stage.output_dir}"]
        hyper = [f"{k}={recipe[k]}" for k in ("rl_beta", "dpop_lambda", "slic_lambda", "learning_rate", "optimizer",
                                               "max_steps", "micro_batch_size", "gradient_accumulation_steps",
                                               "sequence_len")
                 if recipe.get(k) is not None]
        lines.append(f"  settings: {', '.join(hyper)}")
        lines += template_tokens.dry_run_lines(recipe)
        if stage.rebased:
            lines.append(f"  config: {stage.run_config} (the recipe with paths under {chain.output_root})")
        overrides = {**tracking.get(stage.index, {}), "dataset_prepared_path": _planned_prepared(chain, stage, state,
                                                                                                  states)}
        command = train_command(stage, launch, hw.get("accelerator", "cuda"), overrides)
        lines.append(f"  command: {runner.display(command)}")
        if str(overrides["dataset_prepared_path"]).endswith(PENDING_PREPARED):
            lines.append(f"  ({PENDING_PREPARED}: inputs-<digest of its data files and base>, known once the stage "
                         "it starts from has run)")
        if stage.merge_lora:
            lines.append(f"  then:    {runner.display(merge_command(stage))}" + ("   (node 0 only)" if launch.nnodes > 1 else ""))
        base = str(recipe["base_model"])
        inherited = shapes.get(stage.base_path) if stage.base_path else None
        shape = memory.model_shape(base, inherited)
        shapes[stage.output_dir] = shape
        shapes[stage.output_dir / "merged"] = shape
        if shape is None:
            lines.append("  GPU memory: no estimate (base model not in the known table and no local config.json)")
            continue
        est = memory.estimate(recipe, shape, launch.world_size, launch.num_gpus, REPO_ROOT)
        lines.append("  GPU memory per device (estimate):")
        lines += [f"    {what:<78s} {gib:7.1f} GiB" for what, gib in est.rows]
        budget = chain.hardware.get("min_gpu_memory_gib")
        verdict = ""
        if budget:
            verdict = "  -> fits" if est.total_gib <= float(budget) else f"  -> does NOT fit in {budget} GiB"
        lines.append(f"    {'total (+ allocator/NCCL overhead, typically a few GiB)':<78s} {est.total_gib:7.1f} GiB{verdict}")
        if est.host_gib:
            lines += host_ram_check(hw, est)
        lines.append("    assumptions: " + "; ".join(est.assumptions))
    return "\n".join(lines)


def _planned_prepared(chain: Chain, stage: ChainStage, state: StageState, states: list[StageState]) -> str:
    recorded = (state.record or {}).get("dataset_prepared_path") if state.kind == "resumable" else None
    if recorded:
        return rel(recorded)
    try:
        folder = prepared_folder(stage, stage_inputs(chain, stage, states[: stage.index], None))
    except OSError:
        folder = None
    return rel(folder) if folder else rel(stage.prepared_root) + "/" + PENDING_PREPARED


def status_report(chain: Chain) -> str:
    """`smaug chain status`: each stage's state, folder, last logged step and loss, and what the next run does.
    Files only: no model, no axolotl, no GPU, no network."""
    states = assess_chain(chain)
    steps = [next_step(chain, stage, state) for stage, state in zip(chain.stages, states)]
    lines = [f"chain {chain.name}: {chain.description}", f"output root: {chain.output_root}"]
    for stage, state, step in zip(chain.stages, states, steps):
        lines += ["", f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: {state_text(state)}",
                  f"  output: {stage.output_dir}"]
        if state.logged_step is not None:
            where = f" ({state.checkpoint.name})" if state.checkpoint is not None else ""
            lines.append(f"  last logged: step {state.logged_step} of {state.max_steps}, loss {state.loss:.4f}{where}")
        lines.append(f"  next run: {'STOPS: ' + step.fix if step.blocking else step.text}")
        for rank, running in lock.holders(stage.output_dir):
            lines.append(f"  in use now by {running.describe()}" + (f" [NODE_RANK {rank}]" if rank else ""))
    lines.append("")
    if any(step.blocking for step in steps):
        lines.append(f"next `{chain.rerun()}`: stops before any training (see STOPS above)")
    elif all(state.kind == "done" for state in states):
        lines.append(f"next `{chain.rerun()}`: nothing to do (every stage is done)")
    else:
        todo = [f"stage {s.index + 1}: {step.text}" for s, state, step in zip(chain.stages, states, steps)
                if state.kind != "done"]
        lines.append(f"next `{chain.rerun()}`: " + "; ".join(todo))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# run


def _build_tiny_model(target: Path) -> None:
    if (target / "config.json").is_file():
        print(f"prepare: {target} exists, skipped")
        return
    from smaug.training.tiny_model import build_tiny_llama

    atomic_directory(target, build_tiny_llama)  # an empty or broken leftover at target is replaced
    print(f"prepare: wrote tiny Llama to {target}")


def _drop_half_prepared(folder: Path) -> list[Path]:
    """A run killed while axolotl saved its prepared data leaves a folder without dataset_info.json (written
    last); axolotl would try to load it on every rerun and fail. Remove such folders (it is a cache), unless
    another run holds axolotl's own lock on the folder."""
    import shutil

    from filelock import FileLock, Timeout

    if not folder.is_dir():
        return []
    removed = []
    try:
        with FileLock(str(folder / "datasets_prep.lock"), timeout=0):
            for sub in folder.iterdir():
                if sub.is_dir() and not sub.name.startswith(".") and not (sub / "dataset_info.json").is_file():
                    shutil.rmtree(sub)
                    removed.append(sub)
    except Timeout:
        pass
    return removed


def _last_error(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            handle.seek(offset)
            lines = handle.read().splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line.strip()[:300]
    return ""


def run_chain(name: str, output_root: Path | None = None, dry_run: bool = False,
              skip_preflight: bool = False, env: dict[str, str] | None = None,
              chains_file: Path = CHAINS_FILE) -> int:
    env = dict(os.environ if env is None else env)
    chain = plan_chain(name, output_root, chains_file)
    launch = Launch.from_env(chain.hardware, env)
    check_settings(chain)
    missing = missing_inputs(chain)
    tracking = {stage.index: tracking_settings(chain, stage, env) for stage in chain.stages}
    if dry_run:
        validate_stages(chain, launch, tracking)
        print(describe(chain, launch, tracking))
        for problem in missing:
            print(f"WARNING: {problem} (the run stops here unless it exists by then)")
        print("\nevery stage passes axolotl's own config validation (with the DPOP plugin's); nothing was run")
        return 0
    if missing:
        raise UserError(missing[0])

    states = assess_chain(chain)
    steps = [next_step(chain, stage, state) for stage, state in zip(chain.stages, states)]
    if any(step.blocking for step in steps):
        raise _blocked_error(chain, states, steps)
    if all(state.kind == "done" for state in states):
        for stage in chain.stages:
            print(f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: done, skipped ({stage.marker})")
        return 0
    if not skip_preflight:
        preflight(chain, launch)

    folders = [stage.output_dir for stage in chain.stages] + [step["tiny_model"] for step in chain.prepare]
    with lock.hold(folders, launch.node_rank, f"`smaug chain status {chain.name}` shows where it is") as held:
        todo = [stage for stage, state in zip(chain.stages, states) if state.kind != "done"]
        validated = validate_stages(chain, launch, tracking, todo)
        if launch.node_rank == 0:
            for folder in {chain.output_root, *folders, *(f.parent for f in folders)}:
                for leftover in remove_stale_temps(folder):
                    print(f"removed {leftover} (a temp file left by a killed process)")
        for step in chain.prepare:
            _build_tiny_model(step["tiny_model"])
        states = []
        for stage in chain.stages:
            code = _run_stage(chain, stage, states, launch, tracking.get(stage.index, {}), validated, held)
            if code != 0:
                return code
            states.append(assess_stage(chain, stage, states))
    return 0


def _run_stage(chain: Chain, stage: ChainStage, earlier: list[StageState], launch: Launch,
               tracking: dict[str, Any], validated: dict[int, Any], held: list[int]) -> int:
    """One stage, under the chain's locks; ``held`` (the lock files' descriptors) is passed on to axolotl, so that
    the locks stay held while it runs even if this process is killed."""
    label = f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}"
    state = assess_stage(chain, stage, earlier)  # again, just before it runs: the folder is ours only now
    step = next_step(chain, stage, state)
    if step.blocking:
        raise _blocked_error(chain, earlier + [state], [NextStep("")] * len(earlier) + [step])
    if state.kind == "done":
        print(f"{label}: done, skipped ({stage.marker})")
        return 0
    if state.kind in ("finished", "weights-missing"):
        return _finish_without_training(chain, stage, state, earlier, launch, validated, label, held)

    stage.output_dir.mkdir(parents=True, exist_ok=True)
    if launch.node_rank == 0:
        for moved in set_aside_incomplete_checkpoints(stage.output_dir):
            print(f"{label}: set aside a half-written checkpoint as {moved.name}")
    if state.note:
        print(f"{label}: {state.note}")
    resuming = state.kind == "resumable"
    record = state.record if resuming and state.record else None
    if record is None:
        inputs, run_id = stage_inputs(chain, stage, earlier, None), new_run_id()
        prepared = prepared_folder(stage, inputs) or stage.prepared_root / f"run-{run_id}"
        record = stage_record(recipe_name=stage.name, digest=stage.digest, settings=_json_settings(stage),
                              run_id=run_id, inputs=inputs, output_dir=stage.output_dir, prepared=str(prepared))
        if launch.node_rank == 0:
            write_inputs_record(stage.output_dir, record)
    prepared = Path(record.get("dataset_prepared_path") or stage.prepared_root / f"run-{record.get('run_id')}")
    if launch.node_rank == 0:
        for leftover in _drop_half_prepared(prepared):
            print(f"{label}: removed half-written prepared data {leftover}")
    checkpoints = complete_checkpoints(stage.output_dir)
    print(f"{label}: " + (f"resuming from {checkpoints[-1]}" if checkpoints else "starting"), flush=True)
    if stage.rebased:
        write_derived_recipe(stage.run_config, stage.recipe, stage.recipe_path,
                             f"its paths under {chain.output_root}")
    env_vars = stage_env(stage, tracking)
    log_path = stage_log(stage, launch)
    offset = log_path.stat().st_size if log_path.exists() else 0
    accelerator = chain.hardware.get("accelerator", "cuda")
    overrides = {**tracking, "dataset_prepared_path": rel(prepared)}
    code = runner.run_logged(train_command(stage, launch, accelerator, overrides), env_vars, log_path, pass_fds=held)
    if code == 0 and stage.merge_lora and launch.node_rank == 0:  # one node writes the merged weights
        code = runner.run_logged(merge_command(stage), env_vars, log_path, pass_fds=held)
        if code == 0:
            write_merged_provenance(stage)
    if code != 0:
        _report_failure(chain, stage, state, earlier, code, log_path, offset, label)
        return code
    if launch.node_rank == 0:
        write_done_marker(stage.output_dir, record)
    else:
        wait_for_node0(chain, stage, earlier, launch, label)
    print(f"{label}: done ({stage.marker})", flush=True)
    return 0


def stage_log(stage: ChainStage, launch: Launch) -> Path:
    """Each node appends to its own log: several nodes writing one file on shared storage would interleave."""
    return stage.output_dir / (STAGE_LOG if launch.node_rank == 0 else f"smaug_stage.node{launch.node_rank}.log")


def write_merged_provenance(stage: ChainStage) -> Path:
    """The merged folder carries the adapter stage's provenance (same lineage and settings), so `smaug release
    card` and a later stage that starts from it can follow the lineage."""
    from axolotl_dpop.provenance import PROVENANCE_FILE, read_provenance, write_provenance

    provenance = read_provenance(stage.output_dir)
    if provenance is None:
        raise UserError(f"{stage.output_dir}: no {PROVENANCE_FILE} after training {stage.name}; is "
                        "axolotl_dpop.DPOPPlugin listed under `plugins:`?")
    provenance["merged_lora"] = {"adapter_dir": str(stage.output_dir), "command": "axolotl merge-lora"}
    return write_provenance(stage.output_dir / "merged", provenance)


NODE0_WAIT_ENV = "SMAUG_NODE0_WAIT_S"  # how long other nodes wait for node 0's done-marker (default 6 h)
NODE0_POLL_S = 10.0


def wait_for_node0(chain: Chain, stage: ChainStage, earlier: list[StageState], launch: Launch, label: str,
                   wait_s: float | None = None) -> None:
    """Every node but 0 waits until node 0 has marked the stage done (node 0 may still be saving or merging after
    the distributed run ended) instead of going on to a stage whose input is not there yet."""
    print(f"{label}: finished on node {launch.node_rank}; waiting for node 0 to mark it done", flush=True)
    wait_s = float(os.environ.get(NODE0_WAIT_ENV) or 6 * 3600) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while (state := assess_stage(chain, stage, earlier)).kind != "done":
        if state.kind in ("stale", "unreadable"):
            raise UserError(f"{stage.marker}: {state_text(state)}: node 0 and node {launch.node_rank} do not run the "
                            "same recipes and inputs; run the same checkout on every node")
        if time.monotonic() >= deadline:
            raise UserError(f"node {launch.node_rank}: {stage.name} ended here, but node 0 has not marked it done "
                            f"({stage.marker}) after {wait_s:.0f} s; see node 0's log {stage.output_dir / STAGE_LOG} "
                            f"({NODE0_WAIT_ENV} sets the wait)")
        time.sleep(NODE0_POLL_S)


def _report_failure(chain: Chain, stage: ChainStage, before: StageState, earlier: list[StageState], code: int,
                    log_path: Path, offset: int, label: str) -> None:
    after = assess_stage(chain, stage, earlier)
    if after.kind == "finished":
        print(f"{label}: ended with exit code {code} after training had finished ({after.checkpoint.name}); log: "
              f"{log_path}. Run `{chain.rerun()}` again: it completes the stage without training.", file=sys.stderr)
        return
    if after.checkpoint is not None and (before.step is None or (after.step or 0) > before.step):
        print(f"{label}: stopped with exit code {code} after saving {after.checkpoint.name}; log: {log_path}. Run "
              f"`{chain.rerun()}` again to resume from there.", file=sys.stderr)
        return
    error = _last_error(log_path, offset)
    print(f"{label}: failed with exit code {code} before saving a new checkpoint; log: {log_path}"
          + (f"; last error: {error}" if error else "") + f". Fix the cause, then run `{chain.rerun()}` again "
          "(done stages are skipped, a stage with checkpoints resumes).", file=sys.stderr)


def _finish_without_training(chain: Chain, stage: ChainStage, state: StageState, earlier: list[StageState],
                             launch: Launch, validated: dict[int, Any], label: str, held: list[int]) -> int:
    """Training had finished (or a done stage lost its final weights): restore the final weights from the last
    checkpoint and/or merge, and write the marker. Never trains."""
    out = stage.output_dir
    if launch.node_rank != 0:
        print(f"{label}: training had finished; node 0 completes the stage")
        wait_for_node0(chain, stage, earlier, launch, label)
        return 0
    if state.restore_from is not None and state.weights:
        for source in weight_files(state.restore_from):
            copy_file_atomic(source, out / source.name)
        problem = weights_problem(out, bool(stage.recipe.get("adapter")))
        if problem:
            raise UserError(f"{label}: restoring the final weights from {state.restore_from} failed ({problem}); "
                            f"mv {out} {out}.stale-{_stamp()} && {chain.rerun()} to retrain")
        print(f"{label}: training had finished at {state.restore_from.name}; copied its weights to {out} (no training)")
    if stage.merge_lora and weights_problem(out / "merged") is not None:
        log_path = out / STAGE_LOG
        code = runner.run_logged(merge_command(stage), stage_env(stage), log_path, pass_fds=held)
        if code != 0:
            print(f"{label}: axolotl merge-lora failed with exit code {code}; log: {log_path}", file=sys.stderr)
            return code
        write_merged_provenance(stage)
    _write_missing_provenance(stage, validated.get(stage.index), launch, state)
    record = state.record
    if record is None or (state.kind == "finished" and not isinstance(record.get("inputs"), dict)):
        inputs = stage_inputs(chain, stage, earlier, None)
        record = stage_record(recipe_name=stage.name, digest=stage.digest, settings=_json_settings(stage),
                              run_id=(record or {}).get("run_id") or new_run_id(), inputs=inputs, output_dir=out,
                              prepared=(record or {}).get("dataset_prepared_path"))
    if state.kind == "finished":
        write_done_marker(out, record)
        print(f"{label}: training had finished at {state.checkpoint.name if state.checkpoint else '?'}; "
              f"marked done without training ({stage.marker})", flush=True)
    else:
        print(f"{label}: done ({stage.marker})", flush=True)
    return 0


def _write_missing_provenance(stage: ChainStage, cfg: Any, launch: Launch, state: StageState) -> None:
    """axolotl's post-train hook writes smaug_provenance.json after training; a run killed before it has none."""
    from axolotl_dpop.provenance import PROVENANCE_FILE, training_record, write_provenance

    if cfg is None or (stage.output_dir / PROVENANCE_FILE).is_file():
        return
    saved = {k: os.environ.get(k) for k in ("SMAUG_RECIPE", "WORLD_SIZE")}
    os.environ.update(SMAUG_RECIPE=stage.name, WORLD_SIZE=str(launch.world_size))
    try:
        record = training_record(cfg)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    record["completed_by"] = (f"smaug chain: training finished at {state.checkpoint.name if state.checkpoint else '?'}"
                              " but the run ended before axolotl's post-train hook; written by the chain")
    write_provenance(stage.output_dir, record)

