"""The one way we start axolotl: `axolotl train` / `axolotl merge-lora` as subprocesses of the venv's own
executables, with the environment every run needs, the output appended to a log (and echoed, unless runs go
in parallel)."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from smaug.common.paths import REPO_ROOT


def venv_bin() -> Path:
    return Path(sys.executable).parent


def axolotl_env(**extra: str) -> dict[str, str]:
    """This process's environment with the venv's bin/ first on PATH (`axolotl train` starts `accelerate` from
    PATH) and telemetry off (it hangs the process after training); ``extra`` adds variables."""
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["AXOLOTL_DO_NOT_TRACK"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env


def train_command(
    config: str | Path, launcher_args: list[str] | None = None, overrides: dict[str, Any] | None = None
) -> list[str]:
    """`axolotl train CONFIG [--key=value ...]`, then either `--launcher python` (one process: nothing for
    accelerate to launch, and a second interpreter start saved) or `--launcher accelerate -- ARGS`."""
    cmd = [str(venv_bin() / "axolotl"), "train", str(config), *override_args(overrides)]
    if launcher_args is None:
        return cmd + ["--launcher", "python"]
    return cmd + ["--launcher", "accelerate", "--", *launcher_args]


def override_args(overrides: dict[str, Any] | None) -> list[str]:
    """axolotl config keys as its CLI takes them: `--key=value`, and `--key` / `--no-key` for booleans."""
    args = []
    for key, value in (overrides or {}).items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args.append(f"--{flag}={value}")
    return args


def merge_command(config: str | Path) -> list[str]:
    return [str(venv_bin() / "axolotl"), "merge-lora", str(config)]


def display(cmd: list[str]) -> str:
    """The command as a user would type it (venv executables by name, telemetry off)."""
    shown = [Path(cmd[0]).name if cmd[0].startswith(str(venv_bin())) else cmd[0], *cmd[1:]]
    return "AXOLOTL_DO_NOT_TRACK=1 " + shlex.join(shown)


def run_logged(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    cwd: Path = REPO_ROOT,
    echo: bool = True,
    pass_fds: list[int] | tuple[int, ...] = (),
) -> int:
    """Run ``cmd``, appending its output to ``log_path`` (and echoing it when ``echo``); the exit code.
    ``pass_fds``: descriptors the command inherits (the chain's lock files)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {dt.datetime.now(dt.UTC).isoformat()} {shlex.join(cmd)}\n")
        log.flush()
        if not echo:
            return subprocess.run(
                cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False, pass_fds=tuple(pass_fds)
            ).returncode
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            pass_fds=tuple(pass_fds),
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                log.flush()  # `tail -f` and `smaug chain status` see the log as it grows
            return proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
