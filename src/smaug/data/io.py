"""Reading sources and pair files with the types they hold, and writing pair files atomically.

A source is a Hub id (the default for each builder) or a local JSON/JSONL/Parquet file or folder. Local files
are read here, not through `datasets.load_dataset`: its JSON loader turns a column that mixes numbers and text
into JSON-encoded strings (`42` becomes "42", "text" becomes '"text"'), and a builder must see the 42 to refuse
it with its line number. Parquet keeps one type per column, so a wrong type reaches the builders as it is. Hub
sources still go through `datasets` (nothing else knows their layout); a column `datasets` could only read as
mixed JSON is refused by name (`_check_hub_columns`).

Outputs are JSON Lines (`.jsonl`, `.json`) or Parquet (`.parquet`) with exactly the columns `prompt`, `chosen`,
`rejected` (what axolotl's `chatml.prompt_pairs` DPO type reads). Every file is written to a temp file in the
same folder and moved into place with `os.replace`, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

import bisect
import json
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import atomic_write, write_jsonl
from smaug.common.errors import UserError
from smaug.common.files import json_type, read_jsonl_lines

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_OUTPUT_FORMATS = {".json": "jsonl", ".jsonl": "jsonl", ".parquet": "parquet"}
# What `smaug data` writes next to its outputs; never data.
REPORT_SUFFIXES = (".build.json", ".stats.json")


def output_format(out: str | Path) -> str:
    """`jsonl` or `parquet`, from the extension of ``out``; a UserError for anything else."""
    fmt = _OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise UserError(f"output {out}: unknown extension {Path(out).suffix!r}; use .jsonl (JSON Lines) or .parquet")
    return fmt


def is_report(path: str | Path) -> bool:
    """A `.build.json` / `.stats.json` report of `smaug data` (read as data it gives nonsense)."""
    return Path(path).name.endswith(REPORT_SUFFIXES)


def _refuse_report(path: Path) -> None:
    if is_report(path):
        raise UserError(f"{path}: a report written by `smaug data`, not data; pass the data file next to it")


def _looks_like_path(source: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that does not exist is a mistyped local path."""
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in _LOCAL_FORMATS
        or source.count("/") > 1
        or "\\" in source
    )


@dataclass
class SourceRows:
    """The rows of a source as plain dicts, and where each came from (for messages that name the line)."""

    rows: list[dict[str, Any]]
    # One (first row index, file, unit, numbers) per file read: row `first + i` is `unit` numbers[i] of `file`.
    _parts: list[tuple[int, str, str, Sequence[int] | None]] = field(default_factory=list)

    def where(self, index: int) -> str:
        """`file:line` (JSONL), `file: item N` (JSON array), `file: row N` (Parquet), `source: row N` (Hub)."""
        starts = [part[0] for part in self._parts]
        pos = bisect.bisect_right(starts, index) - 1
        if pos < 0:
            return f"row {index + 1}"
        first, name, unit, numbers = self._parts[pos]
        number = numbers[index - first] if numbers is not None else index - first + 1
        return f"{name}:{number}" if unit == "line" else f"{name}: {unit} {number}"

    def fields(self, sample: int = 1000) -> list[str]:
        """The field names of the first ``sample`` rows, in first-seen order."""
        names: dict[str, None] = {}
        for row in self.rows[:sample]:
            if isinstance(row, dict):
                names.update(dict.fromkeys(row))
        return list(names)


def _read_json_file(path: Path) -> tuple[list[dict[str, Any]], str, Sequence[int] | None]:
    """(rows, unit, numbers) of a .json/.jsonl file: JSON Lines, or (.json) one JSON array of objects."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.suffix.lower() == ".json" and head.startswith(b"["):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise UserError(f"{path}:{line}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path}:{err.lineno}: not valid JSON ({err.msg}); a .json source is one array of "
                "objects or one object per line"
            ) from None
        except RecursionError:
            raise UserError(f"{path}: JSON nested too deeply to read") from None
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                raise UserError(
                    f"{path}: item {i} is a JSON {json_type(item)}, not an object; the array must "
                    "hold one object per row"
                )
        return items, "item", None
    try:
        numbered = read_jsonl_lines(path, "source")
    except UserError:
        if head.startswith(b"{"):  # one pretty-printed object (a dict of columns, a config, ...), not rows
            try:
                whole = json.loads(path.read_text(encoding="utf-8-sig"))
            except (ValueError, UnicodeDecodeError):
                whole = None
            if isinstance(whole, dict):
                raise UserError(
                    f"{path}: one JSON object with keys {', '.join(list(whole)[:8])}, not rows; use "
                    "JSON Lines (one object per line) or a JSON array of objects"
                ) from None
        raise
    return [row for _, row in numbered], "line", array("l", (lineno for lineno, _ in numbered))


def _read_parquet_file(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None


def _is_data_file(path: Path) -> bool:
    """A file a folder's data may be in: a known format, not hidden, not one of our reports."""
    return path.suffix.lower() in _LOCAL_FORMATS and not path.name.startswith(".") and not is_report(path)


def _read_rows(path: Path, what: str, unknown_type: str) -> tuple[list[dict[str, Any]], str, Sequence[int] | None]:
    """The rows of a local JSON/JSONL/Parquet file, with the unit ("line"/"row"...) and the line numbers that
    errors cite. Our reports are refused; ``what`` starts the messages, ``unknown_type`` is the one for a file
    of another type."""
    _refuse_report(path)
    kind = _LOCAL_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(unknown_type)
    try:
        if kind == "parquet":
            return _read_parquet_file(path), "row", None
        return _read_json_file(path)
    except OSError as err:  # unreadable (permissions), a FIFO that fails, ...
        raise UserError(f"{what}: cannot read it ({err.strerror or err})") from None


def _read_local_file(path: Path, source: SourceRows) -> None:
    rows, unit, numbers = _read_rows(
        path, f"source {path}", f"source {path}: unknown file type {path.suffix!r}; use .json, .jsonl or .parquet"
    )
    source._parts.append((len(source.rows), str(path), unit, numbers))
    source.rows.extend(rows)


def _folder_files(path: Path, split: str) -> list[Path]:
    """The data files of ``split`` in a local folder, found by `datasets`' own file-name rules (`train-*`,
    `*_test.jsonl`, ...; all files are `train` when no name says a split), our reports and hidden files left out."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        by_split = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises several types for folders it cannot read
        raise UserError(f"source folder {path}: no data files found ({type(err).__name__}: {err})") from None
    usable = {str(name): [Path(f) for f in files if _is_data_file(Path(f))] for name, files in by_split.items()}
    usable = {name: files for name, files in usable.items() if files}
    if not usable:
        raise UserError(f"source folder {path} has no .json/.jsonl/.parquet files")
    if split not in usable:
        raise UserError(f"source folder {path} has no {split!r} split (found: {', '.join(usable)}); pass --split")
    return sorted(usable[split])


def _check_hub_columns(ds: Any, source: str) -> None:
    """Refuse a Hub column that `datasets` could only read as JSON text (it mixes numbers and text, say)."""
    from datasets.features import Json

    mixed = [name for name, feature in ds.features.items() if isinstance(feature, Json)]
    if mixed:
        raise UserError(
            f"source {source}: column(s) {', '.join(mixed)} mix value types (e.g. numbers and text); "
            "download the files and pass --source PATH to see the rows, or fix the dataset"
        )


def read_source(
    source: str | Path,
    *,
    config: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    config_given: bool = False,
) -> SourceRows:
    """The rows of a source and where each came from.

    ``source`` is a local file (.json: JSON Lines or an array of objects; .jsonl; .parquet), a local folder
    (its ``config`` subfolder when there is one, e.g. an `allenai/ai2_arc` snapshot's `ARC-Challenge/`; then
    the files of ``split``, default `train`), or a Hub id loaded with ``config`` and ``split``. A single file
    is one split: ``split`` other than `train` is refused for it, as is a ``config`` the user gave
    (``config_given``) that names no subfolder. A row missing a field gets no entry for it (the builders
    skip and count it)."""
    source = str(source)
    path = Path(source).expanduser()
    out = SourceRows([])
    if path.is_file():
        if split not in (None, "train"):
            raise UserError(
                f"--split {split}: source {path} is a single file, which is one split; pass the "
                "file of that split instead"
            )
        if config_given and config:
            raise UserError(f"--config {config}: source {path} is a single file; pass the file of that config")
        _read_local_file(path, out)
    elif path.is_dir():
        if config and (path / config).is_dir():
            path = path / config
        elif config_given and config:
            raise UserError(f"--config {config}: source folder {path} has no {config}/ subfolder")
        for file in _folder_files(path, split or "train"):
            _read_local_file(file, out)
    elif _looks_like_path(source):
        raise UserError(f"source {source} does not exist; pass --source an existing JSON/JSONL/Parquet file or folder")
    else:
        import datasets

        try:
            ds = datasets.load_dataset(source, config, split=split or "train")
        except Exception as err:  # datasets raises many types; the user needs the source and the cause
            raise UserError(
                f"could not load source {source!r} (config={config}, split={split or 'train'}): "
                f"{type(err).__name__}: {err}. Check the id/path and split, or download it and pass --source PATH"
            ) from err
        _check_hub_columns(ds, source)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        out.rows.extend(ds.to_list())
        out._parts.append((0, source, "row", None))
    if limit is not None:
        del out.rows[limit:]
    return out


def load_source_rows(
    source: str | Path, *, config: str | None = None, split: str = "train", limit: int | None = None
) -> list[dict[str, Any]]:
    """The rows of a source as plain dicts (`read_source` without the locations)."""
    return read_source(source, config=config, split=split, limit=limit).rows


def write_pairs(path: str | Path, pairs: Sequence[dict[str, str]]) -> Path:
    """Write prompt/chosen/rejected pairs as JSONL or Parquet (by extension), atomically.

    Same pairs in, byte-identical file out (for a given pyarrow version in the Parquet case)."""
    fmt = output_format(path)
    if fmt == "jsonl":
        return write_jsonl(path, ({c: p[c] for c in PAIR_COLUMNS} for p in pairs))

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: pa.array([p[c] for p in pairs], type=pa.string()) for c in PAIR_COLUMNS})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def load_pairs(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """The pairs of a JSONL or Parquet file, or of a folder of them (ours, or e.g. a downloaded
    `abacusai/*_DPO_FewShot`): dicts with prompt, chosen, rejected (and `system` when the file has it).

    Every row is checked: the three fields must be non-empty text. A number, list or null is refused with the
    row (line) number rather than turned into text; so are conversations (message lists) and rows of another
    schema (their fields are named). In a folder, hidden files and `smaug data` reports are left out; a report
    given as the file is refused."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise UserError(f"--limit must be a whole number > 0, got {limit!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a .jsonl/.parquet pair file or a folder of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p))
        if not files:
            raise UserError(f"{path}: no .jsonl/.parquet pair files in this folder")
        rows = [row for file in files for row in _pair_rows(file)]
    else:
        rows = _pair_rows(path)
    if not rows:
        raise UserError(f"{path}: no pairs (the file is empty); pass a file that `smaug data build` wrote")
    return rows[:limit] if limit else rows


_CONVERSATION_KEYS = ("messages", "conversations", "conversation")


def _pair_rows(path: Path) -> list[dict[str, str]]:
    rows, unit, numbers = _read_rows(
        path, str(path), f"{path}: unknown pair file type {path.suffix!r}; use .jsonl or .parquet"
    )
    pairs = []
    for i, row in enumerate(rows):
        where = f"{unit} {numbers[i] if numbers is not None else i + 1}"
        listed = [c for c in PAIR_COLUMNS if isinstance(row.get(c), (list, dict))]
        if listed or any(isinstance(row.get(k), list) for k in _CONVERSATION_KEYS):
            what = (
                f"`{listed[0]}` is a list of messages"
                if listed
                else f"`{next(k for k in _CONVERSATION_KEYS if isinstance(row.get(k), list))}` holds messages"
            )
            raise UserError(
                f"{path}: {where} is a conversation ({what}), not a pair of texts; these tools read "
                "prompt/chosen/rejected strings as `smaug data build` writes them: convert the file "
                "(prompt = the user turn, chosen/rejected = the text of each assistant reply)"
            )
        for column in PAIR_COLUMNS:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                if column not in row:
                    found = ", ".join(list(row)[:8]) or "none"
                    raise UserError(
                        f"{path}: {where}: `{column}` is missing (fields: {found}); every pair needs "
                        "prompt, chosen and rejected texts, as `smaug data build` writes them"
                    )
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                got = "empty" if isinstance(value, str) else f"a {type(value).__name__} ({shown}), not text"
                raise UserError(
                    f"{path}: {where}: `{column}` is {got}; every pair needs non-empty text in "
                    "prompt, chosen and rejected"
                )
        pair = {column: row[column] for column in PAIR_COLUMNS}
        if isinstance(row.get("system"), str) and row["system"]:
            pair["system"] = row["system"]
        pairs.append(pair)
    return pairs
