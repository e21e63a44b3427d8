"""The plugin's atomic file writing (provenance, the reference log-prob cache): a temp file in the same folder,
then `os.replace`, so a reader never sees half a file.

Temp names are those `smaug.common.files` uses (`.<name>.<host>.<pid>.<random>.tmp`, the host without dots), so
that a writer killed mid-write leaves a file the next write, or the stage chain, removes once its process is
dead; tests/test_chain_faults.py checks the two agree. A copy because the plugin must not need smaug."""

from __future__ import annotations

import glob
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then move it into place (mode 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _temp_prefix(target: Path) -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"
    return f".{target.name}.{host}.{os.getpid()}."


def _remove_stale_temps(target: Path) -> None:
    prefix = _temp_prefix(target).rsplit(".", 2)[0] + "."  # `.<name>.<host>.`
    for leftover in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = leftover.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # the writer is dead: its temp file will never be moved into place
            leftover.unlink(missing_ok=True)
        except PermissionError:
            pass
