"""Writing files so that readers never see half of one, refusing outputs that would land on an input, and
reading JSONL with errors a user can act on.

Writes go to a temp file in the same folder, then `os.replace`; on any exception the temp file is removed and
the target is left as it was (absent or the old version). A process killed mid-write (kill -9, a pre-empted
node) cannot remove its temp file, so temp names say who wrote them: `.<name>.<host>.<pid>.<random>.tmp`.
The next write of the same target, and the stage chain when it starts, remove those whose writer is dead on
this host (`remove_stale_temps`); another host's or a live writer's are never touched. The plugin's
provenance writer (`axolotl_dpop.provenance`) names its temp files the same way. `check_outputs` is the
one check every command that reads and writes files runs before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError

# `.<name>.<host>.<pid>.<random>.tmp`: the host has no dots (see `host_name`), so the name may have any.
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<rand>[A-Za-z0-9_]+)\.tmp$")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "localhost"


def temp_prefix(target: Path) -> str:
    """The start of a temp name for ``target``: `.<name>.<host>.<pid>.` (mkstemp adds `<random>` + suffix)."""
    return f".{target.name}.{host_name()}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temp files (and temp folders) of our own naming in ``folder`` whose writer process is dead on
    this host; only those for target ``name`` when given. Returns what was removed."""
    folder, host, removed = Path(folder), host_name(), []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = TEMP_NAME.match(entry.name)
        if not match or match["host"] != host or (name is not None and match["name"] != name):
            continue
        if int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another cleaner was first
            continue
        removed.append(path)
    return removed


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
        remove_stale_temps(path.parent, path.name)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
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


def atomic_directory(path: str | Path, build: Callable[[Path], None]) -> Path:
    """Call ``build(tmp_dir)`` on a temp folder next to ``path``, then put it in place of ``path`` (an existing
    folder there is an incomplete leftover and is replaced). Named and cleaned like the temp files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would otherwise become the folder's mode
        build(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def copy_file_atomic(source: str | Path, target: str | Path) -> Path:
    return atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


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
                raise UserError(f"{label} {path} would overwrite {in_label} {in_path} (the same file); choose "
                                "another output path")
            if in_path.is_dir() and _inside(resolved, in_path):
                raise UserError(f"{label} {path} is inside {in_label} {in_path}, which is read as input; write it "
                                "outside that folder")
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
        raise UserError(f"{what} cannot write in {existing} (permission denied or read-only); choose a writable "
                        "folder")
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
