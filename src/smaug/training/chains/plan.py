"""The plan of a chain: recipes/chains.yaml read, each stage's recipe loaded (its paths moved under another output
root when asked), and the folders checked: no two stages share or nest an output, no stage starts from its own
or a later stage's output."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smaug.common.errors import UserError
from smaug.common.files import nearest_existing
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, looks_local, rel, repo_path
from smaug.training.recipes import load_recipe, resolve_recipe_path
from smaug.training.state import (
    DONE_MARKER,
    recipe_hash,
)

CHAINS_FILE = RECIPES_DIR / "chains.yaml"
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "outputs"
STAGE_LOG = "smaug_stage.log"
RESOLVED_CONFIG = "smaug_stage_config.yml"
# Recipe keys that hold paths under the output root (rebased by --output-root).
_PATH_KEYS = (
    "output_dir",
    "base_model",
    "dataset_prepared_path",
    "lora_model_dir",
    "tokenizer_config",
    "dpop_ref_logps_cache_dir",
)
_OUTPUT_PREFIXES = ("./outputs/", "outputs/")
# axolotl's own default when a recipe sets no dataset_prepared_path (relative to where it runs: the repo root).
_AXOLOTL_PREPARED_DEFAULT = "last_run_prepared"
# Experiment-tracking keys: where metrics go, not how the model trains; left out of a recipe's hash.
_TRACKING_PREFIXES = ("wandb_", "mlflow_", "hf_mlflow_", "comet_", "trackio_")
_TRACKING_KEYS = {"use_tensorboard", "use_wandb", "use_mlflow", "use_comet", "use_trackio"}
PENDING_PREPARED = "inputs-PENDING"
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow", ".txt", ".jinja")


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
    def from_env(cls, hardware: dict[str, Any], env: dict[str, str] | None = None) -> Launch:
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
                raise UserError(
                    f"{name}={raw!r} is out of range ({low}..{high if high is not None else ''}); "
                    f"set e.g. {name}={default}"
                )
            return value

        nnodes = number("NNODES", 1)
        wanted = int(hardware.get("gpus") or 1) if hardware.get("accelerator") == "cuda" else 1
        if not env.get("NUM_GPUS") and hardware.get("accelerator") == "cuda" and wanted % nnodes:
            raise UserError(
                f"NNODES={nnodes} cannot give the {wanted} GPUs in total this chain is sized for "
                f"({hardware.get('label', '')}): use a node count that divides {wanted}, or set "
                f"NUM_GPUS (per node) so that NUM_GPUS x NNODES = {wanted}"
            )
        launch = cls(
            num_gpus=number("NUM_GPUS", max(1, wanted // nnodes)),
            nnodes=nnodes,
            node_rank=number("NODE_RANK", 0, low=0),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=number("MASTER_PORT", 29500, low=1, high=65535),
        )
        if not launch.master_addr or any(c.isspace() or c in "/@" for c in launch.master_addr):
            raise UserError(
                f"MASTER_ADDR={launch.master_addr!r} is not a host name or IP address; set it to node "
                "0's address, e.g. MASTER_ADDR=10.0.0.1"
            )
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

    def where(self, chain_name: str) -> str:
        """How messages name this stage: its recipe, its place and its chain."""
        return f"{self.name} (stage {self.index + 1} of chain {chain_name!r})"

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
        return real_path(repo_path(str(base))) if looks_local(base) else None

    @property
    def prepared_root(self) -> Path:
        return real_path(repo_path(str(self.recipe.get("dataset_prepared_path") or _AXOLOTL_PREPARED_DEFAULT)))


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
        if gib is not None and (
            isinstance(gib, bool) or not isinstance(gib, (int, float)) or not math.isfinite(gib) or gib <= 0
        ):
            raise UserError(f"{where}.min_gpu_memory_gib is {gib!r}; it must be a number of GiB > 0")
    return chains


def _rebase(value: Any, output_root: Path) -> Any:
    if isinstance(value, str):
        for prefix in _OUTPUT_PREFIXES:
            if value.startswith(prefix):
                return str(output_root / value[len(prefix) :])
    return value


def real_path(path: Path) -> Path:
    """The path with symlinks resolved, so that two spellings of one folder compare equal."""
    return Path(os.path.realpath(path))


def plan_chain(name: str, output_root: Path | None = None, chains_file: Path = CHAINS_FILE) -> Chain:
    chains = load_chains(chains_file)
    if name not in chains:
        raise UserError(f"no chain {name!r} in {rel(chains_file)}; chains: {', '.join(chains)}")
    spec = chains[name]
    rebase = output_root is not None and real_path(Path(output_root)) != real_path(DEFAULT_OUTPUT_ROOT)
    root = real_path(Path(output_root)) if output_root is not None else DEFAULT_OUTPUT_ROOT

    stages: list[ChainStage] = []
    for index, entry in enumerate(spec["stages"]):
        path = resolve_recipe_path(entry)
        recipe = load_recipe(path)
        where = f"{rel(path)} (stage {index + 1} of chain {name!r})"
        for key in ("base_model", "output_dir"):
            if not recipe.get(key) or not isinstance(recipe[key], str):
                raise UserError(f"{where}: `{key}` is missing (it must name a folder or a Hub model id)")
        if not recipe.get("save_steps") or recipe.get("auto_resume_from_checkpoints") is not True:
            raise UserError(
                f"{where}: a chain stage must be resumable: set `save_steps:` and `auto_resume_from_checkpoints: true`"
            )
        committed = recipe
        if rebase:
            recipe = {k: (_rebase(v, root) if k in _PATH_KEYS else v) for k, v in recipe.items()}
        output_dir = real_path(repo_path(recipe["output_dir"]))
        run_config = output_dir / RESOLVED_CONFIG if rebase else path
        stages.append(
            ChainStage(
                index,
                path,
                recipe,
                output_dir,
                run_config,
                rebase,
                committed=committed,
                merge_lora=bool(recipe.get("adapter")),
            )
        )

    # A stage that starts from an earlier LoRA stage must start from its merged weights.
    for later in stages:
        base = later.base_path
        for earlier in stages[: later.index]:
            if base is None or not earlier.recipe.get("adapter"):
                continue
            if base == earlier.output_dir:
                raise UserError(
                    f"{later.name}: base_model points at the LoRA adapter folder of {earlier.name}; "
                    f"point it at {earlier.recipe['output_dir']}/merged (the chain merges it)"
                )

    prepare = []
    for step in spec.get("prepare") or []:
        if isinstance(step, dict) and isinstance(step.get("tiny_model"), str) and step["tiny_model"]:
            target = _rebase(step["tiny_model"], root) if rebase else step["tiny_model"]
            prepare.append({"tiny_model": real_path(repo_path(target))})
        else:
            raise UserError(f"{rel(chains_file)}: chain {name!r}: unknown prepare step {step!r} (known: tiny_model)")
    chain = Chain(name, spec.get("description", ""), spec.get("hardware") or {}, stages, root, prepare, rebase)
    _check_folders(chain)
    return chain


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_folders(chain: Chain) -> None:
    """Refuse a plan whose stages would write over each other or read what they or a later stage write."""

    def who(stage: ChainStage) -> str:
        return f"stage {stage.index + 1} ({stage.name})"

    for a in chain.stages:
        for b in chain.stages[a.index + 1 :]:
            if _within(a.output_dir, b.output_dir) or _within(b.output_dir, a.output_dir):
                how = "the same output folder" if a.output_dir == b.output_dir else "nested output folders"
                raise UserError(
                    f"chain {chain.name!r}: {who(a)} and {who(b)} write to {how} ({a.output_dir}, "
                    f"{b.output_dir}): one would resume from or overwrite the other's checkpoints and "
                    "model; give each stage its own `output_dir`"
                )
    for stage in chain.stages:
        base = stage.base_path
        if base is not None:
            if _within(base, stage.output_dir):
                raise UserError(
                    f"chain {chain.name!r}: {who(stage)} starts from its own output folder "
                    f"(base_model {stage.recipe['base_model']} is in output_dir {stage.output_dir}); "
                    "point base_model at the model it should start from"
                )
            if _within(stage.output_dir, base):
                raise UserError(
                    f"chain {chain.name!r}: {who(stage)} writes inside the model folder it starts from "
                    f"(output_dir {stage.output_dir} is in base_model {base}); give it its own folder"
                )
            for later in chain.stages[stage.index + 1 :]:
                if _within(base, later.output_dir):
                    raise UserError(
                        f"chain {chain.name!r}: {who(stage)} starts from {base}, the output of "
                        f"{who(later)}, which runs after it (a cycle); order the stages in "
                        f"{rel(CHAINS_FILE)} so that {later.name} comes first, or fix base_model"
                    )
        if stage.recipe.get("dataset_prepared_path"):
            for other in chain.stages:
                if _within(stage.prepared_root, other.output_dir):
                    raise UserError(
                        f"chain {chain.name!r}: the dataset_prepared_path of {who(stage)} "
                        f"({stage.prepared_root}) is inside the output folder of {who(other)}; moving "
                        "that folder aside to retrain it would take the prepared data along: put it "
                        "outside every output_dir"
                    )
    for folder in [stage.output_dir for stage in chain.stages] + [step["tiny_model"] for step in chain.prepare]:
        blocker = nearest_existing(folder)
        if not blocker.is_dir():
            raise UserError(
                f"chain {chain.name!r}: {blocker} is a file, where the chain needs the folder {folder}; "
                "move the file, or choose another output_dir / --output-root"
            )
    for step in chain.prepare:
        for stage in chain.stages:
            if _within(step["tiny_model"], stage.output_dir) or _within(stage.output_dir, step["tiny_model"]):
                raise UserError(
                    f"chain {chain.name!r}: the prepared model {step['tiny_model']} and the output "
                    f"folder of {who(stage)} overlap; keep them apart"
                )
