"""A chain's plan: its stages' recipes (output paths under another root when asked) and the folder checks."""

from __future__ import annotations

import errno
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from smaug.common.errors import UserError
from smaug.common.files import nearest_existing
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, looks_local, rel
from smaug.training.recipes import load_recipe, resolve_recipe_path
from smaug.training.state import DONE_MARKER, recipe_hash

CHAINS_FILE = RECIPES_DIR / "chains.yaml"
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "outputs"
STAGE_LOG = "smaug_stage.log"
RESOLVED_CONFIG = "smaug_stage_config.yml"
# Recipe keys that hold paths under the output root (rebased by --output-root).
_PATH_KEYS = ("output_dir", "base_model", "dataset_prepared_path", "lora_model_dir", "tokenizer_config")
_PATH_KEYS += ("dpop_ref_logps_cache_dir",)
_OUTPUT_PREFIXES = ("./outputs/", "outputs/")
# Experiment-tracking keys: where metrics go, not how the model trains; left out of a recipe's hash.
_TRACKING_PREFIXES = ("wandb_", "mlflow_", "hf_mlflow_", "comet_", "trackio_")
_TRACKING_KEYS = {"use_tensorboard", "use_wandb", "use_mlflow", "use_comet", "use_trackio"}
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accelerator: Literal["cuda", "cpu"] = "cuda"
    gpus: Annotated[StrictInt, Field(ge=1)] | None = None  # in total, over all nodes
    min_gpu_memory_gib: _Positive | None = None  # per device, as torch reports it
    host_ram_gb: _Positive | None = None  # per node, for the states ZeRO-3 offloads
    label: str = ""


class _Prepare(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tiny_model: Annotated[str, Field(min_length=1)]


class _ChainSpec(BaseModel):
    """One entry of recipes/chains.yaml."""

    model_config = ConfigDict(extra="forbid")
    description: str = ""
    hardware: _Hardware = _Hardware()
    prepare: list[_Prepare] = []
    stages: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


def load_chains(path: Path = CHAINS_FILE) -> dict[str, dict[str, Any]]:
    try:
        chains = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{rel(path)}: cannot read the chain definitions ({err})") from None
    if not isinstance(chains, dict):
        raise UserError(f"{rel(path)}: must map chain names to {{stages: [...], hardware: {{...}}}}")
    for name, spec in chains.items():
        try:
            chains[name] = _ChainSpec.model_validate(spec).model_dump(exclude_none=True)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the entry"
            what = "is missing" if first["type"] == "missing" else f"is {first['input']!r}: {first['msg']}"
            raise UserError(f"{rel(path)}: chain {name!r}: {where} {what}") from None
    return chains


def training_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe without its experiment-tracking keys: what a stage's hash and records cover."""
    return {k: v for k, v in recipe.items() if k not in _TRACKING_KEYS and not k.startswith(_TRACKING_PREFIXES)}


def real_path(value: str | Path) -> Path:
    """A path as a recipe gives it (relative to the repository root, where axolotl runs) with symlinks resolved,
    so that two spellings of one folder compare equal. A symlink loop on the way is an error naming the link."""
    path = REPO_ROOT / value
    try:
        return Path(os.path.realpath(path, strict=True))
    except (FileNotFoundError, NotADirectoryError):  # not there yet, or a file in the way (refused later)
        return Path(os.path.realpath(path))
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
    link = next(p for p in [*reversed(path.parents), path] if p.is_symlink() and not p.exists())
    raise UserError(f"{link} is a symbolic link that leads back to itself (a loop): remove it (rm {link}) or fix it")


@dataclass
class Launch:
    """How the stages are started: accelerate's multi-GPU / multi-node arguments, from Make's variables."""

    num_gpus: int  # per node
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    node0_wait_s: float = 6 * 3600  # how long other nodes wait for node 0's done-marker (SMAUG_NODE0_WAIT_S)

    @property
    def world_size(self) -> int:
        return self.num_gpus * self.nnodes

    @classmethod
    def from_env(cls, hardware: dict[str, Any], env: dict[str, str] | None = None) -> Launch:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: float, low: float = 1, high: float = math.inf, kind: type = int) -> Any:
            raw = env.get(name) or ""
            try:
                value = kind(raw) if raw else default
            except ValueError:
                what = "whole number" if kind is int else "number"
                raise UserError(f"{name}={raw!r} is not a {what}; set e.g. {name}={default}") from None
            if not low <= value <= high:  # NaN fails too
                span = f"{low:g}..{high:g}".replace("..inf", " or more")
                raise UserError(f"{name}={raw!r} is out of range ({span}); set e.g. {name}={default}")
            return value

        cuda = hardware.get("accelerator", "cuda") == "cuda"
        nnodes, wanted = number("NNODES", 1), int(hardware.get("gpus") or 1) if cuda else 1
        if cuda and not env.get("NUM_GPUS") and wanted % nnodes:
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
            master_port=number("MASTER_PORT", 29500, high=65535),
            node0_wait_s=number("SMAUG_NODE0_WAIT_S", 6 * 3600, low=1e-3, kind=float),
        )
        if launch.node_rank >= nnodes:
            raise UserError(f"NODE_RANK={launch.node_rank} but NNODES={nnodes}: ranks are 0..NNODES-1")
        if not cuda and launch.world_size > 1:
            raise UserError(
                f"NUM_GPUS={launch.num_gpus} NNODES={nnodes}: this chain runs on the CPU in one process and cannot "
                "be spread over several; unset NUM_GPUS and NNODES"
            )
        if nnodes > 1 and not env.get("MASTER_ADDR"):
            raise UserError(f"NNODES={nnodes} needs MASTER_ADDR, node 0's address (e.g. MASTER_ADDR=10.0.0.1)")
        if any(c.isspace() or c in "/@" for c in launch.master_addr):
            raise UserError(
                f"MASTER_ADDR={launch.master_addr!r} is not a host name or IP address; set it to node "
                "0's address, e.g. MASTER_ADDR=10.0.0.1"
            )
        return launch


@dataclass
class ChainStage:
    index: int
    recipe_path: Path  # the recipe as committed
    recipe: dict[str, Any]  # with paths rebased onto the output root
    output_dir: Path
    run_config: Path  # what `axolotl train` gets: the recipe itself, or a rebased copy in output_dir
    rebased: bool
    committed: dict[str, Any] = field(default_factory=dict)  # the recipe as written (paths not rebased)

    @property
    def name(self) -> str:
        return rel(self.recipe_path)

    def where(self, chain_name: str) -> str:
        """How messages name this stage."""
        return f"{self.name} (stage {self.index + 1} of chain {chain_name!r})"

    @property
    def marker(self) -> Path:
        return self.output_dir / DONE_MARKER

    @property
    def merge_lora(self) -> bool:
        """A LoRA stage is merged (`<output_dir>/merged`) so that later stages and evals start from full weights."""
        return bool(self.recipe.get("adapter"))

    @property
    def settings(self) -> dict[str, Any]:
        """The recipe as committed, tracking keys left out (as JSON stores it): moving the outputs (--output-root,
        or the folder itself) does not change it."""
        return json.loads(json.dumps(training_settings(self.committed or self.recipe), default=str))

    @property
    def digest(self) -> str:
        return recipe_hash(self.settings)

    @property
    def base_path(self) -> Path | None:
        """The base model as a local folder, or None for a Hub id."""
        base = self.recipe["base_model"]
        return real_path(base) if looks_local(base) else None

    @property
    def prepared_root(self) -> Path:
        # axolotl's own default when a recipe sets none, relative to where it runs: the repository root
        return real_path(self.recipe.get("dataset_prepared_path") or "last_run_prepared")


@dataclass
class Chain:
    name: str
    description: str
    hardware: dict[str, Any]
    stages: list[ChainStage]
    output_root: Path
    prepare: list[Path] = field(default_factory=list)  # tiny models to build first
    rebased: bool = False

    def rerun(self) -> str:
        """The command that runs this chain again, as the user would type it."""
        return f"smaug chain run {self.name}" + (f" --output-root {self.output_root}" if self.rebased else "")


def _rebase(value: Any, root: Path) -> Any:
    for prefix in _OUTPUT_PREFIXES:
        if isinstance(value, str) and value.startswith(prefix):
            return str(root / value[len(prefix) :])
    return value


def plan_chain(name: str, output_root: Path | None = None, chains_file: Path = CHAINS_FILE) -> Chain:
    chains = load_chains(chains_file)
    if name not in chains:
        raise UserError(f"no chain {name!r} in {rel(chains_file)}; chains: {', '.join(chains)}")
    spec = chains[name]
    root = real_path(output_root) if output_root is not None else DEFAULT_OUTPUT_ROOT
    rebase = root != real_path(DEFAULT_OUTPUT_ROOT)
    stages = []
    for index, entry in enumerate(spec["stages"]):
        path = resolve_recipe_path(entry)
        committed = load_recipe(path)
        where = f"{rel(path)} (stage {index + 1} of chain {name!r})"
        for key in ("base_model", "output_dir"):
            if not committed.get(key) or not isinstance(committed[key], str):
                raise UserError(f"{where}: `{key}` is missing (it must name a folder or a Hub model id)")
        if not committed.get("save_steps") or committed.get("auto_resume_from_checkpoints") is not True:
            raise UserError(
                f"{where}: a chain stage must be resumable: set `save_steps:` and `auto_resume_from_checkpoints: true`"
            )
        recipe = {k: _rebase(v, root) if rebase and k in _PATH_KEYS else v for k, v in committed.items()}
        output_dir = real_path(recipe["output_dir"])
        run_config = output_dir / RESOLVED_CONFIG if rebase else path
        stages.append(ChainStage(index, path, recipe, output_dir, run_config, rebase, committed))
    prepare = [
        real_path(_rebase(step["tiny_model"], root) if rebase else step["tiny_model"]) for step in spec["prepare"]
    ]
    chain = Chain(name, spec["description"], spec["hardware"], stages, root, prepare, rebase)
    _check_folders(chain)
    return chain


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _check_folders(chain: Chain) -> None:
    """Refuse a plan whose stages would write over each other or read what they or a later stage write."""

    def refuse(text: str) -> UserError:
        return UserError(f"chain {chain.name!r}: {text}")

    def who(stage: ChainStage) -> str:
        return f"stage {stage.index + 1} ({stage.name})"

    for a in chain.stages:
        for b in chain.stages[a.index + 1 :]:
            if _within(a.output_dir, b.output_dir) or _within(b.output_dir, a.output_dir):
                how = "the same output folder" if a.output_dir == b.output_dir else "nested output folders"
                raise refuse(
                    f"{who(a)} and {who(b)} write to {how} ({a.output_dir}, {b.output_dir}): one would resume from "
                    "or overwrite the other's checkpoints and model; give each stage its own `output_dir`"
                )
    for stage in chain.stages:
        base = stage.base_path
        for earlier in chain.stages[: stage.index]:
            if base == earlier.output_dir and earlier.merge_lora:
                raise UserError(
                    f"{stage.name}: base_model points at the LoRA adapter folder of {earlier.name}; "
                    f"point it at {earlier.recipe['output_dir']}/merged (the chain merges it)"
                )
        if base is not None and _within(base, stage.output_dir):
            raise refuse(
                f"{who(stage)} starts from its own output folder (base_model {stage.recipe['base_model']} is in "
                f"output_dir {stage.output_dir}); point base_model at the model it should start from"
            )
        if base is not None and _within(stage.output_dir, base):
            raise refuse(
                f"{who(stage)} writes inside the model folder it starts from (output_dir {stage.output_dir} is in "
                f"base_model {base}); give it its own folder"
            )
        for later in chain.stages[stage.index + 1 :]:
            if base is not None and _within(base, later.output_dir):
                raise refuse(
                    f"{who(stage)} starts from {base}, the output of {who(later)}, which runs after it (a cycle); "
                    f"order the stages in {rel(CHAINS_FILE)} so that {later.name} comes first, or fix base_model"
                )
        for other in chain.stages:
            if stage.recipe.get("dataset_prepared_path") and _within(stage.prepared_root, other.output_dir):
                raise refuse(
                    f"the dataset_prepared_path of {who(stage)} ({stage.prepared_root}) is inside the output folder "
                    f"of {who(other)}; moving that folder aside to retrain it would take the prepared data along: "
                    "put it outside every output_dir"
                )
        for model in chain.prepare:
            if _within(model, stage.output_dir) or _within(stage.output_dir, model):
                raise refuse(
                    f"the prepared model {model} and the output folder of {who(stage)} overlap; keep them apart"
                )
    for folder in [stage.output_dir for stage in chain.stages] + chain.prepare:
        blocker = nearest_existing(folder)
        if not blocker.is_dir():
            raise refuse(
                f"{blocker} is a file, where the chain needs the folder {folder}; move the file, or choose another "
                "output_dir / --output-root"
            )
