"""Writing files so that readers never see half of one, and reading JSONL with errors a user can act on.

Writes go to a temp file in the same folder (named `.<name>.<random>.tmp`), then `os.replace`; on any exception
the temp file is removed and the target is left as it was (absent or the old version)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file next to ``path``, then move it into place."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and (err.filename is None or str(err.filename) == str(tmp)):
            # "No space left on device" from write() names no file, and the temp file is ours: name the target.
            err.filename, err.filename2 = str(path), None
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, sort_keys: bool = False) -> Path:
    """Indented JSON with a trailing newline (UTF-8 kept as is), written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """One JSON object per line (keys in the order given, UTF-8 kept as is), written atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False))
                fh.write("\n")

    return atomic_write(path, write)


def read_jsonl(path: str | Path, what: str = "JSONL") -> list[dict]:
    """The objects of a JSONL file, blank lines skipped. Every problem is a UserError naming the file and line:
    missing, not UTF-8, not JSON, or a line that is not a JSON object."""
    return [row for _, row in read_jsonl_lines(path, what)]


def read_jsonl_lines(path: str | Path, what: str = "JSONL") -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file; errors as `read_jsonl`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UserError(f"{path}: {what} file not found") from None
    rows = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{path}:{lineno}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg}); one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: a JSON {type(row).__name__}, not an object; one JSON object per line")
        rows.append((lineno, row))
    return rows
