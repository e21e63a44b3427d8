"""Stage chains: run a list of axolotl recipes in order (`make smaug-34b` = `smaug chain run smaug-34b`).

recipes/chains.yaml names the stages of each chain and the hardware it needs. For every stage the chain
  - skips it if it finished before (a done-marker holding the recipe's hash, `training.state`);
  - otherwise runs `axolotl train RECIPE --launcher accelerate -- ...` through `training.runner`, and a stage
    killed midway resumes from its last complete checkpoint (the recipes set `save_steps` and
    `auto_resume_from_checkpoints: true`; half-written checkpoints are set aside first);
  - merges a LoRA stage (`axolotl merge-lora`) before a later stage starts from it.
Before any GPU time, `training.preflight` compares the chain's `hardware:` with the GPUs torch finds and stops
with what to run instead; `--dry-run` prints the plan, the exact commands and a per-GPU memory estimate
(`training.memory`), and needs no GPU and no network.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, rel, repo_path
from smaug.training import memory, runner, template_tokens
from smaug.training.preflight import preflight
from smaug.training.recipes import load_recipe, resolve_recipe_path, write_derived_recipe
from smaug.training.state import (
    DONE_MARKER,
    complete_checkpoints,
    recipe_hash,
    set_aside_incomplete_checkpoints,
    stage_status,
    write_done_marker,
)

CHAINS_FILE = RECIPES_DIR / "chains.yaml"
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "outputs"
STAGE_LOG = "smaug_stage.log"
RESOLVED_CONFIG = "smaug_stage_config.yml"
# Recipe keys that hold paths under the output root (rebased by --output-root).
_PATH_KEYS = ("output_dir", "base_model", "dataset_prepared_path", "lora_model_dir", "tokenizer_config")
_OUTPUT_PREFIXES = ("./outputs/", "outputs/")


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

        def number(name: str, default: int) -> int:
            raw = env.get(name) or ""
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise UserError(f"{name}={raw!r} is not a whole number; set e.g. {name}={default}") from None
            if value < (0 if name == "NODE_RANK" else 1):
                raise UserError(f"{name}={raw!r} is out of range")
            return value

        nnodes = number("NNODES", 1)
        wanted = int(hardware.get("gpus") or 1) if hardware.get("accelerator") == "cuda" else 1
        launch = cls(
            num_gpus=number("NUM_GPUS", max(1, wanted // nnodes)),
            nnodes=nnodes,
            node_rank=number("NODE_RANK", 0),
            master_addr=env.get("MASTER_ADDR") or "127.0.0.1",
            master_port=number("MASTER_PORT", 29500),
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

    @property
    def name(self) -> str:
        return rel(self.recipe_path)

    @property
    def marker(self) -> Path:
        return self.output_dir / DONE_MARKER

    @property
    def digest(self) -> str:
        return recipe_hash(self.recipe)

    def status(self) -> str:
        return stage_status(self.output_dir, self.digest)


@dataclass
class Chain:
    name: str
    description: str
    hardware: dict[str, Any]
    stages: list[ChainStage]
    output_root: Path
    prepare: list[dict[str, Any]] = field(default_factory=list)


def load_chains(path: Path = CHAINS_FILE) -> dict[str, dict[str, Any]]:
    try:
        chains = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{rel(path)}: cannot read the chain definitions ({err})") from None
    if not isinstance(chains, dict):
        raise UserError(f"{rel(path)}: must map chain names to {{stages: [...], hardware: {{...}}}}")
    for name, spec in chains.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("stages"), list) or not spec["stages"]:
            raise UserError(f"{rel(path)}: chain {name!r} needs a non-empty `stages:` list of recipe files")
    return chains


def _rebase(value: Any, output_root: Path) -> Any:
    if isinstance(value, str):
        for prefix in _OUTPUT_PREFIXES:
            if value.startswith(prefix):
                return str(output_root / value[len(prefix):])
    return value


def plan_chain(name: str, output_root: Path | None = None, chains_file: Path = CHAINS_FILE) -> Chain:
    chains = load_chains(chains_file)
    if name not in chains:
        raise UserError(f"no chain {name!r} in {rel(chains_file)}; chains: {', '.join(chains)}")
    spec = chains[name]
    rebase = output_root is not None and Path(output_root).resolve() != DEFAULT_OUTPUT_ROOT.resolve()
    root = Path(output_root).resolve() if output_root is not None else DEFAULT_OUTPUT_ROOT

    stages: list[ChainStage] = []
    for index, entry in enumerate(spec["stages"]):
        path = resolve_recipe_path(entry)
        recipe = load_recipe(path)
        where = f"{rel(path)} (stage {index + 1} of chain {name!r})"
        for key in ("base_model", "output_dir"):
            if not recipe.get(key):
                raise UserError(f"{where}: `{key}` is missing")
        if not recipe.get("save_steps") or recipe.get("auto_resume_from_checkpoints") is not True:
            raise UserError(f"{where}: a chain stage must be resumable: set `save_steps:` and "
                            "`auto_resume_from_checkpoints: true`")
        if rebase:
            recipe = {k: (_rebase(v, root) if k in _PATH_KEYS else v) for k, v in recipe.items()}
        output_dir = repo_path(recipe["output_dir"])
        run_config = output_dir / RESOLVED_CONFIG if rebase else path
        stages.append(ChainStage(index, path, recipe, output_dir, run_config, rebase))

    # A stage that starts from an earlier LoRA stage must start from its merged weights.
    for later in stages:
        base = repo_path(str(later.recipe["base_model"])) if _looks_local(later.recipe["base_model"]) else None
        for earlier in stages[: later.index]:
            if base is None or not earlier.recipe.get("adapter"):
                continue
            if base == earlier.output_dir:
                raise UserError(f"{later.name}: base_model points at the LoRA adapter folder of {earlier.name}; "
                                f"point it at {earlier.recipe['output_dir']}/merged (the chain merges it)")
            if base == earlier.output_dir / "merged":
                earlier.merge_lora = True

    prepare = []
    for step in spec.get("prepare") or []:
        if "tiny_model" in step:
            target = _rebase(step["tiny_model"], root) if rebase else step["tiny_model"]
            prepare.append({"tiny_model": repo_path(target)})
        else:
            raise UserError(f"{rel(chains_file)}: chain {name!r}: unknown prepare step {step!r} (known: tiny_model)")
    return Chain(name, spec.get("description", ""), spec.get("hardware") or {}, stages, root, prepare)


def _looks_local(value: Any) -> bool:
    text = str(value)
    return text.startswith(("./", "../", "/")) or Path(text).exists()


# --------------------------------------------------------------------------------------------------------------
# commands


def train_command(stage: ChainStage, launch: Launch, accelerator: str) -> list[str]:
    config = rel(stage.run_config)
    if accelerator == "cpu":
        return runner.train_command(config)
    args = ["--num_processes", str(launch.world_size), "--num_machines", str(launch.nnodes),
            "--machine_rank", str(launch.node_rank), "--main_process_ip", launch.master_addr,
            "--main_process_port", str(launch.master_port)]
    if launch.world_size > 1:
        args.append("--multi_gpu")
    return runner.train_command(config, launcher_args=args)


def merge_command(stage: ChainStage) -> list[str]:
    return runner.merge_command(rel(stage.run_config))


def stage_env(stage: ChainStage) -> dict[str, str]:
    # The committed recipe, for provenance when axolotl gets a rebased copy.
    return runner.axolotl_env(SMAUG_RECIPE=stage.name)


# --------------------------------------------------------------------------------------------------------------
# dry run


def describe(chain: Chain, launch: Launch) -> str:
    hw = chain.hardware
    lines = [f"chain {chain.name}: {chain.description}",
             f"hardware: {hw.get('label', hw.get('accelerator', '?'))}"
             + (f" ({hw.get('gpus')} GPUs in total, >= {hw.get('min_gpu_memory_gib')} GiB each)"
                if hw.get("accelerator") == "cuda" else ""),
             f"launch: NUM_GPUS={launch.num_gpus} NNODES={launch.nnodes} NODE_RANK={launch.node_rank} "
             f"MASTER_ADDR={launch.master_addr} MASTER_PORT={launch.master_port} (world size {launch.world_size})",
             f"output root: {chain.output_root}"]
    for step in chain.prepare:
        lines.append(f"prepare: smaug showcase tiny-model {step['tiny_model']}"
                     + ("  [exists, skipped]" if (step["tiny_model"] / "config.json").is_file() else ""))
    shapes: dict[Path, memory.ModelShape | None] = {}
    for stage in chain.stages:
        recipe = stage.recipe
        kind = recipe.get("rl") or "sft"
        if recipe.get("dpo_loss_type"):
            kind += f" ({', '.join(recipe['dpo_loss_type'])})"
        if recipe.get("adapter"):
            kind += f", {recipe['adapter']}"
        status = stage.status()
        status_text = {"done": "done: skipped", "stale": "done with a DIFFERENT recipe version: stops",
                       "new": "to run"}.get(status) or f"to run, resuming from {status.split(':', 1)[-1]}"
        lines += ["", f"stage {stage.index + 1}/{len(chain.stages)}: {stage.name}  [{kind}]  ({status_text})",
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
        lines.append(f"  command: {runner.display(train_command(stage, launch, chain.hardware.get('accelerator', 'cuda')))}")
        if stage.merge_lora:
            lines.append(f"  then:    {runner.display(merge_command(stage))}")
        base = str(recipe["base_model"])
        inherited = shapes.get(repo_path(base)) if _looks_local(base) else None
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
            lines.append(f"    host RAM per node for offloaded states: ~{est.host_gib:.0f} GiB")
        lines.append("    assumptions: " + "; ".join(est.assumptions))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# run


def _build_tiny_model(target: Path) -> None:
    if (target / "config.json").is_file():
        print(f"prepare: {target} exists, skipped")
        return
    import shutil
    import tempfile

    from smaug.training.tiny_model import build_tiny_llama

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    build_tiny_llama(tmp)
    if target.exists():  # an empty or broken leftover
        shutil.rmtree(target)
    os.replace(tmp, target)
    print(f"prepare: wrote tiny Llama to {target}")


def run_chain(name: str, output_root: Path | None = None, dry_run: bool = False,
              skip_preflight: bool = False, env: dict[str, str] | None = None) -> int:
    chain = plan_chain(name, output_root)
    launch = Launch.from_env(chain.hardware, env)
    if dry_run:
        print(describe(chain, launch))
        return 0

    statuses = [stage.status() for stage in chain.stages]
    for stage, status in zip(chain.stages, statuses):
        if status == "stale":
            raise UserError(f"{stage.output_dir} was trained from a different version of {stage.name} "
                            f"(the hash in {stage.marker} does not match the recipe now): move or delete "
                            "that folder to retrain, or restore the recipe")
    if all(status == "done" for status in statuses):
        for stage in chain.stages:
            print(f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}: done, skipped ({stage.marker})")
        return 0
    if not skip_preflight:
        preflight(chain, launch)

    for step in chain.prepare:
        _build_tiny_model(step["tiny_model"])

    accelerator = chain.hardware.get("accelerator", "cuda")
    for stage, status in zip(chain.stages, statuses):
        label = f"stage {stage.index + 1}/{len(chain.stages)} {stage.name}"
        if status == "done":
            print(f"{label}: done, skipped ({stage.marker})")
            continue
        base = str(stage.recipe["base_model"])
        if _looks_local(base) and not repo_path(base).exists():
            raise UserError(f"{stage.name}: base_model {base} does not exist; it is written by an earlier stage "
                            f"of a chain (run the whole chain: smaug chain run {name})")
        stage.output_dir.mkdir(parents=True, exist_ok=True)
        for moved in set_aside_incomplete_checkpoints(stage.output_dir):
            print(f"{label}: set aside a half-written checkpoint as {moved.name}")
        checkpoints = complete_checkpoints(stage.output_dir)
        print(f"{label}: " + (f"resuming from {checkpoints[-1]}" if checkpoints else "starting"), flush=True)
        if stage.rebased:
            write_derived_recipe(stage.run_config, stage.recipe, stage.recipe_path,
                                 f"its paths under {chain.output_root}")
        env_vars = stage_env(stage)
        log_path = stage.output_dir / STAGE_LOG
        code = runner.run_logged(train_command(stage, launch, accelerator), env_vars, log_path)
        if code == 0 and stage.merge_lora:
            code = runner.run_logged(merge_command(stage), env_vars, log_path)
        if code != 0:
            print(f"{label}: failed with exit code {code}; log: {log_path}. Run the same command again to resume "
                  "from the last checkpoint.", file=sys.stderr)
            return code
        if launch.node_rank == 0:
            write_done_marker(stage.output_dir, stage.name, stage.digest)
        print(f"{label}: done ({stage.marker})", flush=True)
    return 0


