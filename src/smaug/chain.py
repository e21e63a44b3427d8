"""Stage chains: run a list of axolotl recipes in order (`make smaug-34b` = `smaug chain run smaug-34b`).

recipes/chains.yaml names the stages of each chain and the hardware it needs. For every stage the chain
  - skips it if it finished before (a done-marker `<output_dir>/.smaug_stage_done` holding the recipe's hash,
    written only after `axolotl train` exited 0);
  - otherwise runs `axolotl train RECIPE --launcher accelerate -- ...` from the venv, and a stage killed
    midway resumes from its last complete checkpoint (the recipes set `save_steps` and
    `auto_resume_from_checkpoints: true`; half-written checkpoints are set aside first);
  - merges a LoRA stage (`axolotl merge-lora` into `<output_dir>/merged`) before marking it done, so a later
    stage, `make eval` and `smaug card` start from full weights.
On several nodes (NNODES > 1, outputs on shared storage) every node runs the same chain; only node 0 merges
and writes done-markers, and the other nodes wait for node 0's marker before they go on to the next stage.
Before any GPU time, preflight compares the chain's `hardware:` with the GPUs torch finds and stops with
what to run instead; `--dry-run` prints the plan, the exact commands and a per-GPU memory estimate, and
needs no GPU and no network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smaug import memory
from smaug.atomic import write_text_atomic
from smaug.errors import UserError
from smaug.paths import RECIPES_DIR, REPO_ROOT
from smaug.recipes import load_recipe, rel, resolve_recipe_path

CHAINS_FILE = RECIPES_DIR / "chains.yaml"
DEFAULT_OUTPUT_ROOT = REPO_ROOT / "outputs"
DONE_MARKER = ".smaug_stage_done"
STAGE_LOG = "smaug_stage.log"
RESOLVED_CONFIG = "smaug_stage_config.yml"
# Recipe keys that hold paths under the output root (rebased by --output-root).
_PATH_KEYS = ("output_dir", "base_model", "dataset_prepared_path", "lora_model_dir", "tokenizer_config")
_OUTPUT_PREFIXES = ("./outputs/", "outputs/")
_TRUE = {"1", "true", "yes", "on"}


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
class Stage:
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


@dataclass
class Chain:
    name: str
    description: str
    hardware: dict[str, Any]
    stages: list[Stage]
    output_root: Path
    prepare: list[dict[str, Any]] = field(default_factory=list)


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Hash of the settings (not the comments): a done stage whose recipe changed is not silently reused."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


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


def _absolute(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def plan_chain(name: str, output_root: Path | None = None, chains_file: Path = CHAINS_FILE) -> Chain:
    chains = load_chains(chains_file)
    if name not in chains:
        raise UserError(f"no chain {name!r} in {rel(chains_file)}; chains: {', '.join(chains)}")
    spec = chains[name]
    rebase = output_root is not None and Path(output_root).resolve() != DEFAULT_OUTPUT_ROOT.resolve()
    root = Path(output_root).resolve() if output_root is not None else DEFAULT_OUTPUT_ROOT

    stages: list[Stage] = []
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
        output_dir = _absolute(recipe["output_dir"])
        run_config = output_dir / RESOLVED_CONFIG if rebase else path
        stages.append(Stage(index, path, recipe, output_dir, run_config, rebase, merge_lora=bool(recipe.get("adapter"))))

    # A stage that starts from an earlier LoRA stage must start from its merged weights.
    for later in stages:
        base = _absolute(str(later.recipe["base_model"])) if _looks_local(later.recipe["base_model"]) else None
        for earlier in stages[: later.index]:
            if base is None or not earlier.recipe.get("adapter"):
                continue
            if base == earlier.output_dir:
                raise UserError(f"{later.name}: base_model points at the LoRA adapter folder of {earlier.name}; "
                                f"point it at {earlier.recipe['output_dir']}/merged (the chain merges it)")

    prepare = []
    for step in spec.get("prepare") or []:
        if "tiny_model" in step:
            target = _rebase(step["tiny_model"], root) if rebase else step["tiny_model"]
            prepare.append({"tiny_model": _absolute(target)})
        else:
            raise UserError(f"{rel(chains_file)}: chain {name!r}: unknown prepare step {step!r} (known: tiny_model)")
    return Chain(name, spec.get("description", ""), spec.get("hardware") or {}, stages, root, prepare)


def _looks_local(value: Any) -> bool:
    text = str(value)
    return text.startswith(("./", "../", "/")) or Path(text).exists()


# --------------------------------------------------------------------------------------------------------------
# commands


def venv_bin() -> Path:
    return Path(sys.executable).parent


def stage_env(stage: Stage) -> dict[str, str]:
    env = dict(os.environ)
    # accelerate (and axolotl's other launchers) are found on PATH: the venv's own first.
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["AXOLOTL_DO_NOT_TRACK"] = "1"
    env["SMAUG_RECIPE"] = stage.name  # the committed recipe, for provenance when axolotl gets a rebased copy
    return env


def train_command(stage: Stage, launch: Launch, accelerator: str) -> list[str]:
    config = rel(stage.run_config)
    if accelerator == "cpu":
        # One CPU process: nothing for accelerate to launch, and it would cost a second interpreter start.
        return [str(venv_bin() / "axolotl"), "train", config, "--launcher", "python"]
    args = [str(venv_bin() / "axolotl"), "train", config, "--launcher", "accelerate", "--",
            "--num_processes", str(launch.world_size), "--num_machines", str(launch.nnodes),
            "--machine_rank", str(launch.node_rank), "--main_process_ip", launch.master_addr,
            "--main_process_port", str(launch.master_port)]
    if stage.recipe.get("deepspeed"):
        if launch.world_size > 1:
            # accelerate's DeepSpeed launcher (--multi_gpu would wrap the ZeRO-3 model in DDP);
            args.append("--use_deepspeed")
        if launch.nnodes > 1:
            # one launcher per node (torchrun, started on every node like this chain), not DeepSpeed's
            # default pdsh/ssh launcher that starts all nodes from node 0.
            args += ["--deepspeed_multinode_launcher", "standard"]
    elif launch.world_size > 1:
        args.append("--multi_gpu")
    return args


def merge_command(stage: Stage) -> list[str]:
    return [str(venv_bin() / "axolotl"), "merge-lora", rel(stage.run_config)]


def _display(cmd: list[str]) -> str:
    shown = [Path(cmd[0]).name if cmd[0].startswith(str(venv_bin())) else cmd[0], *cmd[1:]]
    return "AXOLOTL_DO_NOT_TRACK=1 " + shlex.join(shown)


# --------------------------------------------------------------------------------------------------------------
# state of a stage


def stage_status(stage: Stage) -> str:
    """'done', 'stale' (done with another recipe version), 'resume:<checkpoint>' or 'new'."""
    if stage.marker.is_file():
        try:
            recorded = json.loads(stage.marker.read_text()).get("sha256")
        except (OSError, json.JSONDecodeError):
            recorded = None
        return "done" if recorded == stage.digest else "stale"
    checkpoints = complete_checkpoints(stage.output_dir)
    return f"resume:{checkpoints[-1].name}" if checkpoints else "new"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders the trainer finished writing (trainer_state.json is written last), by step."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def set_aside_incomplete_checkpoints(output_dir: Path) -> list[Path]:
    """A run killed while saving leaves a checkpoint without trainer_state.json; axolotl would resume from it
    (it takes the highest number) and fail. Rename such folders so the last complete one is used."""
    moved = []
    for path in output_dir.glob("checkpoint-*"):
        if path.is_dir() and path.name.split("-")[-1].isdigit() and not (path / "trainer_state.json").is_file():
            target = path.with_name(f"incomplete-{path.name}")
            try:
                os.replace(path, target)
            except FileNotFoundError:  # another node (shared storage) set it aside first
                continue
            moved.append(target)
    return moved


# --------------------------------------------------------------------------------------------------------------
# finishing a stage (several nodes share the outputs folder)

NODE0_WAIT_ENV = "SMAUG_NODE0_WAIT_S"  # how long other nodes wait for node 0's done-marker (default 6 h)
NODE0_POLL_S = 10.0


def stage_log(stage: Stage, launch: Launch) -> Path:
    """Each node appends to its own log: several nodes writing one file on shared storage would interleave."""
    return stage.output_dir / (STAGE_LOG if launch.node_rank == 0 else f"smaug_stage.node{launch.node_rank}.log")


def write_merged_provenance(stage: Stage) -> Path:
    """The merged folder carries the adapter stage's provenance (same lineage and settings), so `smaug card`
    and a later stage that starts from it can follow the lineage."""
    from axolotl_dpop.provenance import PROVENANCE_FILE, read_provenance

    provenance = read_provenance(stage.output_dir)
    if provenance is None:
        raise UserError(f"{stage.output_dir}: no {PROVENANCE_FILE} after training {stage.name}; is "
                        "axolotl_dpop.DPOPPlugin listed under `plugins:`?")
    provenance["merged_lora"] = {"adapter_dir": str(stage.output_dir), "command": "axolotl merge-lora"}
    target = stage.output_dir / "merged" / PROVENANCE_FILE
    write_text_atomic(target, json.dumps(provenance, indent=2, default=str) + "\n")
    return target


def finish_stage(stage: Stage, launch: Launch, wait_s: float | None = None) -> None:
    """Node 0 writes the done-marker. Every other node waits until node 0 has written it (node 0 may still be
    saving or merging after the distributed run ended) instead of going on to a stage whose input is not there yet."""
    if launch.node_rank == 0:
        write_text_atomic(stage.marker, json.dumps({
            "recipe": stage.name, "sha256": stage.digest, "output_dir": str(stage.output_dir),
            "finished_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }, indent=2) + "\n")
        return
    wait_s = float(os.environ.get(NODE0_WAIT_ENV) or 6 * 3600) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while (status := stage_status(stage)) != "done":
        if status == "stale":
            raise UserError(f"{stage.marker} was written for a different version of {stage.name}: node 0 and "
                            f"node {launch.node_rank} run different recipes; run the same checkout on every node")
        if time.monotonic() >= deadline:
            raise UserError(f"node {launch.node_rank}: {stage.name} ended here, but node 0 has not marked it done "
                            f"({stage.marker}) after {wait_s:.0f} s; see node 0's log {stage.output_dir / STAGE_LOG} "
                            f"({NODE0_WAIT_ENV} sets the wait)")
        time.sleep(NODE0_POLL_S)


# --------------------------------------------------------------------------------------------------------------
# preflight


def detect_gpus() -> tuple[list[float], str]:
    """(memory in GiB of each CUDA device, how they were found)."""
    try:
        import torch
    except ImportError:
        return [], "torch is not installed"
    if not torch.cuda.is_available():
        return [], f"no CUDA device (torch {torch.__version__}: torch.cuda.device_count() == 0)"
    sizes = [torch.cuda.get_device_properties(i).total_memory / memory.GIB for i in range(torch.cuda.device_count())]
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return sizes, f"{len(sizes)} CUDA device(s): {', '.join(sorted(names))}"


def preflight(chain: Chain, launch: Launch, gpus: tuple[list[float], str] | None = None) -> None:
    hardware = chain.hardware
    if hardware.get("accelerator") != "cuda":
        return
    need_total = int(hardware.get("gpus") or 1)
    need_gib = float(hardware.get("min_gpu_memory_gib") or 0)
    sizes, found = gpus if gpus is not None else detect_gpus()
    problems = []
    if launch.world_size < need_total:
        problems.append(f"it is sized for {need_total} GPUs in total but NUM_GPUS x NNODES = "
                        f"{launch.num_gpus} x {launch.nnodes} = {launch.world_size}")
    if len(sizes) < launch.num_gpus:
        problems.append(f"this node should have NUM_GPUS={launch.num_gpus} GPUs and has {found}")
    small = [f"{gib:.0f} GiB" for gib in sizes[: launch.num_gpus] if gib < need_gib]
    if small:
        problems.append(f"each GPU needs >= {need_gib:.0f} GiB; found {', '.join(small)} ({found})")
    if problems:
        raise UserError(
            f"chain {chain.name} needs {hardware_text(hardware)} ({need_total} GPUs, >= {need_gib:.0f} GiB "
            f"each) and stops before using any GPU time: " + "; ".join(problems) + ".\n"
            f"  See the plan, exact commands and a GPU memory estimate (no GPU needed): "
            f"DRY_RUN=1 make {chain.name}   (smaug chain run {chain.name} --dry-run)\n"
            f"  Run the same chain on this CPU in minutes: make smaug-tiny (or make demo)\n"
            f"  Several nodes: set NUM_GPUS (per node), NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each.\n"
            f"  Know better (e.g. a different card): SMAUG_SKIP_PREFLIGHT=1 skips this check."
        )


# --------------------------------------------------------------------------------------------------------------
# dry run


def hardware_text(hardware: dict[str, Any]) -> str:
    """What a chain needs, as the dry run and the READMEs show it: its label and the host RAM it states."""
    text = str(hardware.get("label") or hardware.get("accelerator", "?"))
    ram = hardware.get("host_ram_gb")
    if ram:
        text += f", ~{ram / 1000:g} TB host RAM" if ram >= 1000 else f", ~{ram:g} GB host RAM"
    return text


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
    lines = [f"    host RAM per node for offloaded states (estimate): {need_gb:.0f} GB ({est.host_gib:.0f} GiB); {verdict}"]
    lines += [f"      {what:<76s} {gib * memory.GIB / 1e9:7.0f} GB" for what, gib in est.host_rows]
    return lines


def describe(chain: Chain, launch: Launch) -> str:
    hw = chain.hardware
    lines = [f"chain {chain.name}: {chain.description}",
             f"hardware: {hardware_text(hw)}"
             + (f" ({hw.get('gpus')} GPUs in total, >= {hw.get('min_gpu_memory_gib')} GiB each)"
                if hw.get("accelerator") == "cuda" else ""),
             f"launch: NUM_GPUS={launch.num_gpus} NNODES={launch.nnodes} NODE_RANK={launch.node_rank} "
             f"MASTER_ADDR={launch.master_addr} MASTER_PORT={launch.master_port} (world size {launch.world_size})",
             f"output root: {chain.output_root}"]
    for step in chain.prepare:
        lines.append(f"prepare: smaug tiny-model {step['tiny_model']}"
                     + ("  [exists, skipped]" if (step["tiny_model"] / "config.json").is_file() else ""))
    shapes: dict[Path, memory.ModelShape | None] = {}
    for stage in chain.stages:
        recipe = stage.recipe
        kind = recipe.get("rl") or "sft"
        if recipe.get("dpo_loss_type"):
            kind += f" ({', '.join(recipe['dpo_loss_type'])})"
        if recipe.get("adapter"):
            kind += f", {recipe['adapter']}"
        status = stage_status(stage)
        status_text = {"done": "done: skipped", "stale": "done with a DIFFERENT recipe version: stops",
                       "new": "to run"}.get(status) or f"to run, resuming from {status.split(':', 1)[-1]}"
        lines += ["", f"stage {stage.index + 1}/{len(chain.stages)}: {stage.name}  [{kind}]  ({status_text})",
                  f"  base_model: {recipe['base_model']}",
                  f"  output_dir: {stage.output_dir}"]
        hyper = [f"{k}={recipe[k]}" for k in ("rl_beta", "dpop_lambda", "learning_rate", "optimizer", "max_steps",
                                               "micro_batch_size", "gradient_accumulation_steps", "sequence_len")
                 if recipe.get(k) is not None]
        lines.append(f"  settings: {', '.join(hyper)}")
        if stage.rebased:
            lines.append(f"  config: {stage.run_config} (the recipe with paths under {chain.output_root})")
        lines.append(f"  command: {_display(train_command(stage, launch, chain.hardware.get('accelerator', 'cuda')))}")
        if stage.merge_lora:
            lines.append(f"  then:    {_display(merge_command(stage))}" + ("   (node 0 only)" if launch.nnodes > 1 else ""))
        base = str(recipe["base_model"])
        inherited = shapes.get(_absolute(base)) if _looks_local(base) else None
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


# --------------------------------------------------------------------------------------------------------------
# run


def _run_logged(cmd: list[str], env: dict[str, str], log_path: Path) -> int:
    """Run from the repo root, echoing output and appending it to the stage log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n=== {dt.datetime.now(dt.timezone.utc).isoformat()} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            return proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise


def _build_tiny_model(target: Path) -> None:
    if (target / "config.json").is_file():
        print(f"prepare: {target} exists, skipped")
        return
    import shutil
    import tempfile

    from smaug.tiny import build_tiny_llama

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

    statuses = [stage_status(stage) for stage in chain.stages]
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
        if _looks_local(base) and not _absolute(base).exists():
            raise UserError(f"{stage.name}: base_model {base} does not exist; it is written by an earlier stage "
                            f"of a chain (run the whole chain: smaug chain run {name})")
        stage.output_dir.mkdir(parents=True, exist_ok=True)
        for moved in set_aside_incomplete_checkpoints(stage.output_dir):
            print(f"{label}: set aside a half-written checkpoint as {moved.name}")
        checkpoints = complete_checkpoints(stage.output_dir)
        print(f"{label}: " + (f"resuming from {checkpoints[-1]}" if checkpoints else "starting"), flush=True)
        if stage.rebased:
            write_text_atomic(stage.run_config, f"# {stage.name} with its paths under {chain.output_root} "
                                                "(written by smaug chain; edit the recipe, not this file)\n"
                              + yaml.safe_dump(stage.recipe, sort_keys=False))
        env_vars = stage_env(stage)
        log_path = stage_log(stage, launch)
        code = _run_logged(train_command(stage, launch, accelerator), env_vars, log_path)
        if code == 0 and stage.merge_lora and launch.node_rank == 0:  # one node writes the merged weights
            code = _run_logged(merge_command(stage), env_vars, log_path)
            if code == 0:
                write_merged_provenance(stage)
        if code != 0:
            print(f"{label}: failed with exit code {code}; log: {log_path}. Run the same command again to resume "
                  "from the last checkpoint.", file=sys.stderr)
            return code
        if launch.node_rank != 0:
            print(f"{label}: finished on node {launch.node_rank}; waiting for node 0 to mark it done", flush=True)
        finish_stage(stage, launch)
        print(f"{label}: done ({stage.marker})", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------------------
# CLI


def register(subparsers) -> None:
    parser = subparsers.add_parser("chain", help="run a chain of training stages (what `make smaug-34b` calls)")
    sub = parser.add_subparsers(dest="chain_command", required=True)
    run = sub.add_parser("run", help="run a chain from recipes/chains.yaml (skips done stages, resumes killed ones)")
    run.add_argument("name", help="chain name, e.g. smaug-34b, smaug-72b, smaug-7b, tiny")
    run.add_argument("--dry-run", action="store_true", default=os.environ.get("DRY_RUN", "").lower() in _TRUE,
                     help="print the plan, commands and a GPU memory estimate; run nothing (env DRY_RUN=1)")
    run.add_argument("--output-root", type=Path, default=os.environ.get("SMAUG_OUTPUT_ROOT") or None,
                     help=f"write every stage under this folder instead of {DEFAULT_OUTPUT_ROOT} "
                          "(env SMAUG_OUTPUT_ROOT; on several nodes: a folder on shared storage)")
    run.add_argument("--skip-preflight", action="store_true",
                     default=os.environ.get("SMAUG_SKIP_PREFLIGHT", "").lower() in _TRUE,
                     help="do not check the GPUs first (env SMAUG_SKIP_PREFLIGHT=1)")
    run.set_defaults(func=_cmd_run)
    lst = sub.add_parser("list", help="the chains and their stages")
    lst.set_defaults(func=_cmd_list)


def _cmd_run(args: argparse.Namespace) -> int:
    return run_chain(args.name, args.output_root, dry_run=args.dry_run, skip_preflight=args.skip_preflight)


def _cmd_list(args: argparse.Namespace) -> int:
    for name, spec in load_chains().items():
        print(f"{name}: {' -> '.join(spec['stages'])}  [{hardware_text(spec.get('hardware') or {})}]")
    return 0
