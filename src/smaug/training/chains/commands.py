"""The commands a stage runs (`axolotl train` for the node and the recipe, `axolotl merge-lora`), their
environment, and the experiment-tracking keys the chain adds."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError
from smaug.common.paths import rel
from smaug.training import runner
from smaug.training.chains.plan import Chain, ChainStage, Launch


def tracking_settings(chain: Chain, stage: ChainStage, env: dict[str, str]) -> dict[str, Any]:
    """axolotl config keys for experiment tracking, added by the chain (the recipes stay as they are): TensorBoard
    under the stage's folder unless SMAUG_TENSORBOARD=0, W&B when WANDB_PROJECT is set, MLflow when
    MLFLOW_TRACKING_URI is set. A key the recipe sets itself is left alone."""
    recipe, name = stage.recipe, f"{chain.name}/{Path(stage.name).stem}"
    wanted = {"use_tensorboard": True} if env.get("SMAUG_TENSORBOARD", "1") != "0" else {}
    if env.get("WANDB_PROJECT") and "wandb_project" not in recipe:
        _need_package("wandb", "WANDB_PROJECT")
        wanted |= {"wandb_project": env["WANDB_PROJECT"], "wandb_entity": env.get("WANDB_ENTITY")}
        wanted |= {"wandb_mode": env.get("WANDB_MODE"), "wandb_name": env.get("WANDB_NAME") or name}
    if env.get("MLFLOW_TRACKING_URI") and "mlflow_tracking_uri" not in recipe:
        _need_package("mlflow", "MLFLOW_TRACKING_URI")
        # axolotl logs to MLflow only when an experiment is named
        experiment = env.get("MLFLOW_EXPERIMENT_NAME") or chain.name
        wanted |= {"mlflow_tracking_uri": env["MLFLOW_TRACKING_URI"], "mlflow_experiment_name": experiment}
        wanted["mlflow_run_name"] = name
    return {key: value for key, value in wanted.items() if value is not None and key not in recipe}


def _need_package(package: str, variable: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise UserError(
            f"{variable} is set but the `{package}` package is not installed, and axolotl logs to it through "
            f"that package: pip install {package} (or unset {variable})"
        )


def override_args(overrides: dict[str, Any] | None) -> list[str]:
    """axolotl config keys as its CLI takes them: `--key=value`, and `--key` / `--no-key` for booleans."""
    args = []
    for key, value in (overrides or {}).items():
        flag = key.replace("_", "-")
        args.append((f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag}={value}")
    return args


def train_command(
    stage: ChainStage, launch: Launch, accelerator: str, overrides: dict[str, Any] | None = None
) -> list[str]:
    """`axolotl train CONFIG --key=value ...`, then `--launcher python` on a CPU (one process: nothing for
    accelerate to launch) or `--launcher accelerate -- ARGS` for the node's GPUs."""
    cmd = [str(runner.venv_bin() / "axolotl"), "train", rel(stage.run_config), *override_args(overrides)]
    if accelerator == "cpu":
        return cmd + ["--launcher", "python"]
    args = ["--num_processes", str(launch.world_size), "--num_machines", str(launch.nnodes)]
    args += ["--machine_rank", str(launch.node_rank), "--main_process_ip", launch.master_addr]
    args += ["--main_process_port", str(launch.master_port)]
    if stage.recipe.get("deepspeed"):
        if launch.world_size > 1:  # accelerate's DeepSpeed launcher (--multi_gpu would wrap the ZeRO-3 model in DDP)
            args.append("--use_deepspeed")
        if launch.nnodes > 1:  # one launcher per node (as this chain runs), not DeepSpeed's pdsh/ssh from node 0
            args += ["--deepspeed_multinode_launcher", "standard"]
    elif launch.world_size > 1:
        args.append("--multi_gpu")
    return cmd + ["--launcher", "accelerate", "--", *args]


def merge_command(stage: ChainStage, into: Path | None = None) -> list[str]:
    """`axolotl merge-lora` of the stage's adapter; it writes `<output_dir>/merged`, so ``into`` moves that."""
    overrides = {"lora_model_dir": stage.output_dir, "output_dir": into} if into else {}
    return [str(runner.venv_bin() / "axolotl"), "merge-lora", rel(stage.run_config), *override_args(overrides)]


def stage_env(stage: ChainStage, tracking: dict[str, Any] | None = None) -> dict[str, str]:
    # The committed recipe, for provenance when axolotl gets a rebased copy; W&B files under the stage folder.
    extra = {"SMAUG_RECIPE": stage.name}
    if (tracking or {}).get("wandb_project") and not os.environ.get("WANDB_DIR"):
        extra["WANDB_DIR"] = str(stage.output_dir)
    return runner.axolotl_env(**extra)
