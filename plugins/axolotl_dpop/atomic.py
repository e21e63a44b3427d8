"""Atomic file writing for the plugin and for `smaug`: a temp file next to the target, then `os.replace`, so a
reader sees the old file or the new one, never half of one.

Temp names say who wrote them, `.<name>.<host>.<pid>.<random>.tmp`: a writer killed mid-write (kill -9) cannot
remove its temp file, so the next write of the same target (and the stage chain at start) removes those whose
writer is dead on this host; a live writer's or another host's are never touched."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return pid > 0


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove our temp files and folders in ``folder`` (only those for target ``name`` when given) whose writer
    is dead on this host; returns what was removed."""
    removed, host = [], host_name()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if (
            not match
            or match["host"] != host
            or name not in (None, match["name"])
            or int(match["pid"]) == os.getpid()
            or pid_alive(int(match["pid"]))
        ):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{host_name()}.{os.getpid()}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, fsync it, then move it into place."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent, path.name)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise become the file's mode
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename in (None, str(tmp)):
            err.filename, err.filename2 = str(path), None  # "no space left" names no file: name the target
        raise
    return path


def atomic_directory(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Call ``build(tmp_dir)`` on a temp folder next to ``path``, then put it in place of ``path`` (an existing
    folder there is replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())
        build(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, data: Any, *, sort_keys: bool = False) -> Path:
    """Indented JSON with a trailing newline, UTF-8 kept as is."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
