"""Run the real `axolotl train` CLI on tiny configs and read what it logged."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import yaml

from smaug.training.runner import axolotl_env as runner_env

VENV_BIN = Path(sys.executable).parent


def write_pairs(path: Path, n: int = 24, seed: int = 0, **extra_rows) -> Path:
    """Low-edit-distance arithmetic pairs in prompt/chosen/rejected form (chatml.prompt_pairs)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(n):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            handle.write(
                json.dumps(
                    {
                        "prompt": f"What is {a} + {b}?",
                        "chosen": f"{a} + {b} = {a + b}. The answer is {a + b}.",
                        "rejected": f"{a} + {b} = {a + b + rng.randint(1, 9)}. The answer is {a + b}.",
                    }
                )
                + "\n"
            )
    return path


def tiny_config(model_dir: Path, data: Path, out_dir: Path, **overrides) -> dict:
    cfg = {
        "base_model": str(model_dir),
        "plugins": ["axolotl_dpop.DPOPPlugin"],
        "rl": "dpop",
        "rl_beta": 0.3,
        "dpop_lambda": 50,
        "chat_template": "chatml",
        "datasets": [{"path": str(data), "ds_type": "json", "split": "train", "type": "chatml.prompt_pairs"}],
        "sequence_len": 128,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_steps": 3,
        "learning_rate": 5.0e-4,
        "optimizer": "adamw_torch",
        "lr_scheduler": "constant",
        "warmup_steps": 0,
        "output_dir": str(out_dir),
        "dataset_prepared_path": str(out_dir.parent / f"{out_dir.name}-prepared"),
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "bf16": False,
        "fp32": True,
        "seed": 7,
        "dataloader_num_workers": 0,
        "dataset_num_proc": 1,
    }
    for key, value in overrides.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    return cfg


def axolotl_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the tests run `axolotl` in: the chain's (`smaug.training.runner.axolotl_env`), offline,
    one thread per process; ``extra`` adds to it."""
    return runner_env(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", **(extra or {})
    )


def write_config(cfg: dict, workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return cfg_path


def run_axolotl_train(
    cfg: dict,
    workdir: Path,
    launcher_args: list[str] | None = None,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`axolotl train cfg.yml` in a subprocess, offline, with the venv's bin first on PATH (`env` adds to it)."""
    cmd = [str(VENV_BIN / "axolotl"), "train", str(write_config(cfg, workdir))]
    if launcher_args:
        cmd += launcher_args
    return subprocess.run(cmd, cwd=workdir, env=axolotl_env(env), capture_output=True, text=True, timeout=timeout)


def log_history(out_dir: Path) -> list[dict]:
    """The per-step logs of the last checkpoint's trainer_state.json."""
    checkpoints = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, f"no checkpoint in {out_dir}: {list(out_dir.iterdir())}"
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"axolotl train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
