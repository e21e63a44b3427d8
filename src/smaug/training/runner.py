"""Starting axolotl from the venv, with the environment every run needs, its output echoed and logged."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

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


def display(cmd: list[str]) -> str:
    """The command as a user would type it (venv executables by name, telemetry off)."""
    shown = [Path(cmd[0]).name if cmd[0].startswith(str(venv_bin())) else cmd[0], *cmd[1:]]
    return "AXOLOTL_DO_NOT_TRACK=1 " + shlex.join(shown)


def run_logged(cmd: list[str], env: dict[str, str], log_path: Path, *, pass_fds=()) -> int:
    """Run ``cmd`` in the repository root, echoing its output and appending it to ``log_path``; the exit code.
    ``pass_fds``: descriptors the command inherits (the chain's lock files)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== {utc_stamp()} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            pass_fds=tuple(pass_fds),
        )
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                log.flush()  # `tail -f` and `smaug chain status` see the log as it grows
            return proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
