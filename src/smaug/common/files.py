"""Refusing outputs that would land on an input (`check_outputs`, run by every command that reads and writes
files before any work), and reading JSONL with errors that name the line. Atomic writes: `axolotl_dpop.atomic`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError

PathLike = str | Path | None


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and path.is_relative_to(folder)


def check_outputs(outputs: Mapping[str, PathLike], inputs: Mapping[str, PathLike] | None = None) -> None:
    """Refuse, before any work, an output file that would write over or into what the command reads, or that
    cannot be written. ``outputs`` and ``inputs`` map a label for the message (`--out`, `the build report`) to a
    path; None values and inputs that are not local paths (Hub ids) are skipped. A UserError names both paths
    when an output
    - is an input: the same path once symlinks are resolved, or the same file under another name (hard link);
    - lies inside an input folder (the next run would read it as input);
    - is another output too;
    - is a folder, has a file where a parent folder should be, or would go into a folder that cannot be written.
    """
    ins = [(label, Path(p).expanduser()) for label, p in (inputs or {}).items() if p is not None and str(p)]
    ins = [(label, p.resolve(), _file_id(p)) for label, p in ins if p.exists()]
    seen: dict[Path, str] = {}
    for label, raw in outputs.items():
        if raw is None or not str(raw):
            continue
        path = Path(raw).expanduser()
        resolved = path.resolve()
        out_id = _file_id(path)
        for in_label, in_path, in_id in ins:
            if resolved == in_path or (out_id is not None and out_id == in_id):
                raise UserError(
                    f"{label} {path} would overwrite {in_label} {in_path} (the same file); choose another output path"
                )
            if in_path.is_dir() and _inside(resolved, in_path):
                raise UserError(
                    f"{label} {path} is inside {in_label} {in_path}, which is read as input; write it "
                    "outside that folder"
                )
        if resolved in seen:
            raise UserError(f"{label} {path} is also {seen[resolved]}; give each output its own path")
        seen[resolved] = label
        if path.is_dir():
            raise UserError(f"{label} {path} is a folder; give a file path")
        check_output_folder(path.parent, f"{label} {path}:")


def nearest_existing(path: str | Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (what a mkdir would build on)."""
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_output_folder(folder: str | Path, what: str) -> Path:
    """Fail before any work when ``folder`` cannot become a writable folder: it (or a parent) is a file, or the
    nearest existing parent is not writable. ``what`` starts the message. Returns ``folder`` as a Path."""
    folder = Path(folder)
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{what} {existing} is a file, not a folder; choose a path in a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} cannot write in {existing} (permission denied or read-only); choose a writable folder")
    return folder


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (`array`, `string`, `null`, ...), for messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


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
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} file ({err.strerror or err})") from None
    if data.startswith(b"PAR1"):
        raise UserError(f"{path}: a Parquet file, not JSON Lines; give it the .parquet extension")
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark some editors write
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
        except RecursionError:
            raise UserError(f"{path}:{lineno}: JSON nested too deeply to read; one flat object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: a JSON {json_type(row)}, not an object; one JSON object per line")
        rows.append((lineno, row))
    return rows
