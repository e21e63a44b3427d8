"""How smaug starts axolotl: `axolotl train` / `axolotl merge-lora` from the venv, with the environment every run
needs, the output appended to a log (and echoed, unless runs go in parallel)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from axolotl_dpop.provenance import utc_stamp
from smaug.common.paths import REPO_ROOT


def venv_bin() -> Path:
    return Path(sys.executable).parent


def axolotl_env(**extra: str) -> dict[str, str]:
    """This process's environment with the venv's bin/ first on PATH (`axolotl train` starts `accelerate` from
    PATH) and telemetry off (it hangs the process after training); ``extra`` adds variables."""
    env = {**os.environ, "PATH": f"{venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}", "AXOLOTL_DO_NOT_TRACK": "1"}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {**env, **extra}


def override_args(overrides: dict[str, Any] | None) -> list[str]:
    """axolotl config keys as its CLI takes them: `--key=value`, and `--key` / `--no-key` for booleans."""
    args = []
    for key, value in (overrides or {}).items():
        flag = key.replace("_", "-")
        args.append((f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag}={value}")
    return args


def train_command(
    config: str | Path, launcher_args: list[str] | None = None, overrides: dict[str, Any] | None = None
) -> list[str]:
    """`axolotl train CONFIG [--key=value ...]`, then `--launcher python` (one process: nothing for accelerate to
    launch) or `--launcher accelerate -- ARGS`."""
    cmd = [str(venv_bin() / "axolotl"), "train", str(config), *override_args(overrides)]
    return cmd + (
        ["--launcher", "python"] if launcher_args is None else ["--launcher", "accelerate", "--", *launcher_args]
    )


def merge_command(config: str | Path) -> list[str]:
    return [str(venv_bin() / "axolotl"), "merge-lora", str(config)]


def display(cmd: list[str]) -> str:
    """The command as a user would type it (venv executables by name, telemetry off)."""
    shown = [Path(cmd[0]).name if cmd[0].startswith(str(venv_bin())) else cmd[0], *cmd[1:]]
    return "AXOLOTL_DO_NOT_TRACK=1 " + shlex.join(shown)


def run_logged(
    cmd: list[str], env: dict[str, str], log_path: Path, *, cwd: Path = REPO_ROOT, echo: bool = True, pass_fds=()
) -> int:
    """Run ``cmd``, appending its output to ``log_path`` (and echoing it when ``echo``); the exit code.
    ``pass_fds``: descriptors the command inherits (the chain's lock files)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {utc_stamp()} {shlex.join(cmd)}\n")
        log.flush()
        out = subprocess.PIPE if echo else log
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            pass_fds=tuple(pass_fds),
        )
        try:
            for line in proc.stdout if echo else ():
                sys.stdout.write(line)
                log.write(line)
                log.flush()  # `tail -f` and `smaug chain status` see the log as it grows
            return proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
