"""Reading sources and pair files with the types they hold; the build report that ties a build's files together.

Local sources are read here, not by `datasets.load_dataset`: its JSON loader turns a column that mixes numbers and
text into JSON strings (`42` becomes "42"), and a builder must see the 42 to refuse it with its line number."""

from __future__ import annotations

import bisect
import hashlib
import json
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from axolotl_dpop.atomic import atomic_write, write_jsonl
from smaug.common.errors import UserError
from smaug.common.files import json_type, read_jsonl_lines

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
BUILD_REPORT = ".build.json"
REPORT_SUFFIXES = (BUILD_REPORT, ".stats.json")  # what `smaug data` writes next to its outputs; never data


def output_format(out: str | Path) -> str:
    """`json` (JSON Lines) or `parquet`, from the extension of ``out``."""
    fmt = _FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise UserError(f"output {out}: unknown extension {Path(out).suffix!r}; use .jsonl (JSON Lines) or .parquet")
    return fmt


def is_report(path: str | Path) -> bool:
    return Path(path).name.endswith(REPORT_SUFFIXES)


def _is_data_file(path: Path) -> bool:
    return path.suffix.lower() in _FORMATS and not path.name.startswith(".") and not is_report(path)


@dataclass
class SourceRows:
    """The rows of a source as plain dicts, and where each came from (for messages that name the line)."""

    rows: list[dict[str, Any]]
    # One (first row index, file, unit, numbers) per file read: row `first + i` is `unit` numbers[i] of `file`.
    parts: list[tuple[int, str, str, Sequence[int] | None]] = field(default_factory=list)

    def where(self, index: int) -> str:
        """`file:line` (JSONL), `file: item N` (JSON array), `file: row N` (Parquet), `source: row N` (Hub)."""
        pos = bisect.bisect_right([part[0] for part in self.parts], index) - 1
        if pos < 0:
            return f"row {index + 1}"
        first, name, unit, numbers = self.parts[pos]
        number = numbers[index - first] if numbers is not None else index - first + 1
        return f"{name}:{number}" if unit == "line" else f"{name}: {unit} {number}"

    def fields(self) -> list[str]:
        """The field names of the first 1,000 rows, in first-seen order."""
        return list(dict.fromkeys(k for row in self.rows[:1000] if isinstance(row, dict) for k in row))


def _read_json_array(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg}); a .json source is one array of objects or one "
            "object per line"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to read") from None
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {i} is a JSON {json_type(item)}, not an object; one object per row")
    return items


def _read_rows(path: Path, what: str) -> tuple[list[dict[str, Any]], str, Sequence[int] | None]:
    """(rows, unit, numbers) of a local .json/.jsonl/.parquet file: row i is `unit` numbers[i] (or i + 1)."""
    if is_report(path):
        raise UserError(f"{path}: a report written by `smaug data`, not data; pass the data file next to it")
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{what} {path}: unknown file type {path.suffix!r}; use .json, .jsonl or .parquet")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist(), "row", None
            except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise UserError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if path.suffix.lower() == ".json" and head.startswith(b"["):
            return _read_json_array(path), "item", None
        try:
            numbered = read_jsonl_lines(path, what)
        except UserError:
            try:  # one pretty-printed object (a dict of columns, a config, ...), not rows
                whole = json.loads(path.read_text(encoding="utf-8-sig")) if head.startswith(b"{") else None
            except (ValueError, UnicodeDecodeError):
                whole = None
            if isinstance(whole, dict):
                raise UserError(
                    f"{path}: one JSON object with keys {', '.join(list(whole)[:8])}, not rows; use JSON Lines "
                    "(one object per line) or a JSON array of objects"
                ) from None
            raise
    except OSError as err:  # unreadable (permissions), a FIFO that fails, ...
        raise UserError(f"{what} {path}: cannot read it ({err.strerror or err})") from None
    return [row for _, row in numbered], "line", array("l", (lineno for lineno, _ in numbered))


def _folder_files(path: Path, split: str, flag: str) -> list[Path]:
    """The data files of ``split`` in a folder, by `datasets`' own file-name rules (`train-*`, `*_test.jsonl`, ...;
    all files are `train` when no name says a split), our reports and hidden files left out."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        by_split = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises several types for folders it cannot read
        raise UserError(f"source folder {path}: no data files found ({type(err).__name__}: {err})") from None
    usable = {str(name): sorted(Path(f) for f in files if _is_data_file(Path(f))) for name, files in by_split.items()}
    usable = {name: files for name, files in usable.items() if files}
    if not usable:
        raise UserError(f"source folder {path} has no .json/.jsonl/.parquet files")
    if split not in usable:
        raise UserError(f"source folder {path} has no {split!r} split (found: {', '.join(usable)}); pass {flag}")
    return usable[split]


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
    source: str,
    *,
    config: str | None = None,
    split: str = "train",
    limit: int | None = None,
    config_given: bool = False,
    flag: str = "--split",
) -> SourceRows:
    """The rows of a local file (one split: ``split`` other than `train` is refused), a local folder (its
    ``config`` subfolder when there is one, then the files of ``split``) or a Hub dataset. A ``config`` the user
    gave (``config_given``) must exist; ``flag`` names the option that chose ``split`` in messages."""
    path = Path(source).expanduser()
    out = SourceRows([])
    if path.is_file() or path.is_dir():
        if path.is_file() and split != "train":
            raise UserError(
                f"{flag} {split}: source {path} is a single file, which is one split; pass that split's file"
            )
        if config and (path / config).is_dir():
            path = path / config
        elif config_given and config:
            raise UserError(f"--config {config}: source {path} has no {config}/ subfolder; pass that config's files")
        for file in [path] if path.is_file() else _folder_files(path, split, flag):
            rows, unit, numbers = _read_rows(file, "source")
            out.parts.append((len(out.rows), str(file), unit, numbers))
            out.rows.extend(rows)
    elif source.startswith((".", "/", "~")) or path.suffix.lower() in _FORMATS or source.count("/") > 1:
        raise UserError(f"source {source} does not exist; pass --source an existing JSON/JSONL/Parquet file or folder")
    else:
        import datasets

        try:
            ds = datasets.load_dataset(source, config, split=split)
        except Exception as err:  # datasets raises many types; the user needs the source and the cause
            raise UserError(
                f"could not load source {source!r} (config={config}, split={split}): {type(err).__name__}: "
                f"{err}. Check the id/path and split, or download it and pass --source PATH"
            ) from err
        _check_hub_columns(ds, source)
        out.rows.extend(ds.select(range(min(limit, len(ds)))).to_list() if limit else ds.to_list())
        out.parts.append((0, source, "row", None))
    if limit is not None:
        del out.rows[limit:]
    return out


def write_pairs(path: str | Path, pairs: Sequence[dict[str, str]]) -> Path:
    """prompt/chosen/rejected pairs as JSONL or Parquet (by extension), atomically; same pairs, same bytes."""
    if output_format(path) == "json":
        return write_jsonl(path, ({c: p[c] for c in PAIR_COLUMNS} for p in pairs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: pa.array([p[c] for p in pairs], type=pa.string()) for c in PAIR_COLUMNS})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


# --- the build report ---------------------------------------------------------------------------------------


class SplitReport(BaseModel):
    output: str
    rows: int
    pairs: int
    skipped: dict[str, int]
    skipped_total: int
    corrupted: dict[str, int] | None = None  # MetaMath: how many rejected responses each rule made
    rows_left_out: int = 0  # rows of the last held-out group in neither split
    source_split: str | None = None  # the source split an eval split was built from (None: rows held out)


class BuildReport(BaseModel):
    """`<out>.build.json`, written after every other file of the build; `files` holds the sha256 of each (paths
    relative to the report's folder), so a reader can tell a set one rebuild replaced only part of."""

    builder: str
    source: str
    source_id: str | None
    source_kind: str
    config: str | None
    split: str
    limit: int | None
    seed: int
    few_shot: int
    options: dict[str, Any]
    rule: str
    rows_read: int
    pairs: int
    skipped: dict[str, int]
    skipped_total: int
    corrupted: dict[str, int] | None = None
    eval: SplitReport | None
    output: str
    format: str
    columns: list[str] = list(PAIR_COLUMNS)
    axolotl_type: str = "chatml.prompt_pairs"
    card: str | None = None
    pushed_to: str | None = None
    edit_distance: dict[str, Any] | None = None
    seconds: float
    versions: dict[str, str | None]
    created_at: str
    files: dict[str, str] = {}


def report_path(out: str | Path) -> Path:
    return Path(f"{out}{BUILD_REPORT}")


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_report(path: Path) -> BuildReport:
    try:
        return BuildReport.model_validate_json(path.read_bytes())
    except ValidationError as err:
        raise UserError(
            f"{path}: not a build report this version reads ({err.errors()[0]['msg']}); run the `smaug data "
            "build` that wrote it again"
        ) from None


def check_build_set(path: Path) -> None:
    """Refuse a pair file whose set, per a build report in its folder that lists it, is not what that build wrote:
    a rebuild stopped between its files leaves new and old files side by side."""
    for report_file in sorted(path.parent.glob(f"*{BUILD_REPORT}")):
        report, folder = read_report(report_file), report_file.parent
        if any((folder / name).resolve() == path.resolve() for name in report.files):
            changed = [
                n for n, digest in report.files.items() if not (folder / n).is_file() or sha256(folder / n) != digest
            ]
            if changed:
                raise UserError(
                    f"{path}: one of the files of the build recorded in {report_file}, but {', '.join(changed)} "
                    "is missing or differs from what that build wrote (a rebuild stopped part way, or a file was "
                    "replaced); run the `smaug data build` again"
                )


# --- pair files -------------------------------------------------------------------------------------------------

_CONVERSATION_KEYS = ("messages", "conversations", "conversation")


def load_pairs(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """The pairs of a JSONL or Parquet file, or of a folder of them (hidden files and our reports left out):
    dicts with prompt, chosen, rejected (and `system` when a row has it). A number, list or null where text
    belongs, a conversation and a row of another schema are refused with the row; so is a file of a build set
    that one rebuild replaced only part of (`check_build_set`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a .jsonl/.parquet pair file or a folder of them")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p)) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path}: no .jsonl/.parquet pair files in this folder")
    rows = [row for file in files for row in _pair_rows(file)]
    if not rows:
        raise UserError(f"{path}: no pairs (the file is empty); pass a file that `smaug data build` wrote")
    return rows[:limit] if limit else rows


def _pair_rows(path: Path) -> list[dict[str, str]]:
    rows, unit, numbers = _read_rows(path, "pair file")
    check_build_set(path)
    pairs = []
    for i, row in enumerate(rows):
        where = f"{unit} {numbers[i] if numbers is not None else i + 1}"
        listed = [c for c in PAIR_COLUMNS if isinstance(row.get(c), (list, dict))]
        held = [k for k in _CONVERSATION_KEYS if isinstance(row.get(k), list)]
        if listed or held:
            what = f"`{listed[0]}` is a list of messages" if listed else f"`{held[0]}` holds messages"
            raise UserError(
                f"{path}: {where} is a conversation ({what}), not a pair of texts; these tools read prompt/chosen/"
                "rejected strings as `smaug data build` writes them: convert the file (prompt = the user turn, "
                "chosen/rejected = the text of each assistant reply)"
            )
        for column in PAIR_COLUMNS:
            value = row.get(column)
            if column not in row:
                raise UserError(
                    f"{path}: {where}: `{column}` is missing (fields: {', '.join(list(row)[:8]) or 'none'}); every "
                    "pair needs prompt, chosen and rejected texts, as `smaug data build` writes them"
                )
            if not isinstance(value, str) or not value.strip():
                got = "empty" if isinstance(value, str) else f"a {type(value).__name__} ({_short(value)}), not text"
                raise UserError(f"{path}: {where}: `{column}` is {got}; every pair needs non-empty text in each")
        pair = {column: row[column] for column in PAIR_COLUMNS}
        if isinstance(row.get("system"), str) and row["system"]:
            pair["system"] = row["system"]
        pairs.append(pair)
    return pairs


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
