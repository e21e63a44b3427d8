"""Reading sources through `datasets.load_dataset` and writing pair files atomically.

A source is a Hub id (the default for each builder) or a local JSON/JSONL/Parquet file or folder. Outputs are
JSON Lines (`.jsonl`, `.json`) or Parquet (`.parquet`) with exactly the columns `prompt`, `chosen`, `rejected`
(what axolotl's `chatml.prompt_pairs` DPO type reads). Every file is written to a temp file in the same folder
and moved into place with `os.replace`, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError
from smaug.common.files import atomic_write, read_jsonl_lines, write_jsonl_atomic

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_OUTPUT_FORMATS = {".json": "jsonl", ".jsonl": "jsonl", ".parquet": "parquet"}


def output_format(out: str | Path) -> str:
    """`jsonl` or `parquet`, from the extension of ``out``; a UserError for anything else."""
    fmt = _OUTPUT_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        raise UserError(f"output {out}: unknown extension {Path(out).suffix!r}; use .jsonl (JSON Lines) or .parquet")
    return fmt


def _looks_like_path(source: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that does not exist is a mistyped local path."""
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in _LOCAL_FORMATS
        or source.count("/") > 1
        or "\\" in source
    )


def load_source_rows(
    source: str | Path, *, config: str | None = None, split: str = "train", limit: int | None = None
) -> list[dict[str, Any]]:
    """Load a source dataset as a list of plain dicts (fast to iterate; no per-row `datasets.map`).

    ``source`` is a local file (.json/.jsonl/.parquet), a local folder (its `config` subfolder is used when
    it exists, e.g. an `allenai/ai2_arc` snapshot's `ARC-Challenge/`), or a Hub id loaded with ``config`` and
    ``split``. A row missing a field gets `None` there (the builders skip and count it)."""
    import datasets

    source = str(source)
    path = Path(source).expanduser()
    try:
        if path.is_file():
            builder = _LOCAL_FORMATS.get(path.suffix.lower())
            if builder is None:
                raise UserError(f"source {path}: unknown file type {path.suffix!r}; use .json, .jsonl or .parquet")
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir():
            if config and (path / config).is_dir():
                path = path / config
            files = [p for p in path.rglob("*") if p.suffix.lower() in _LOCAL_FORMATS]
            if not files:
                raise UserError(f"source folder {path} has no .json/.jsonl/.parquet files")
            ds = datasets.load_dataset(str(path), split=split)
        elif _looks_like_path(source):
            raise UserError(f"source {source} does not exist; pass --source an existing JSON/JSONL/Parquet file or folder")
        else:
            ds = datasets.load_dataset(source, config, split=split)
    except UserError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the source and the cause
        raise UserError(
            f"could not load source {source!r} (config={config}, split={split}): {type(err).__name__}: {err}. "
            "Check the id/path and split, or download it and pass --source PATH"
        ) from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()


def write_pairs(path: str | Path, pairs: Sequence[dict[str, str]]) -> Path:
    """Write prompt/chosen/rejected pairs as JSONL or Parquet (by extension), atomically.

    Same pairs in, byte-identical file out (for a given pyarrow version in the Parquet case)."""
    fmt = output_format(path)
    if fmt == "jsonl":
        return write_jsonl_atomic(path, ({c: p[c] for c in PAIR_COLUMNS} for p in pairs))

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: pa.array([p[c] for p in pairs], type=pa.string()) for c in PAIR_COLUMNS})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def load_pairs(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """The pairs of a JSONL or Parquet file, or of a folder of them (ours, or e.g. a downloaded
    `abacusai/*_DPO_FewShot`): dicts with prompt, chosen, rejected (and `system` when the file has it).

    Every row is checked: the three fields must be non-empty text. A number, list or null is refused with the
    row (line) number rather than turned into text."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a .jsonl/.parquet pair file or a folder of them")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in _LOCAL_FORMATS and not p.name.startswith("."))
        if not files:
            raise UserError(f"{path}: no .jsonl/.parquet files in this folder")
        rows = [row for file in files for row in _pair_rows(file)]
    else:
        rows = _pair_rows(path)
    if not rows:
        raise UserError(f"{path}: no pairs in the file")
    return rows[:limit] if limit else rows


def _pair_rows(path: Path) -> list[dict[str, str]]:
    suffix = path.suffix.lower()
    if path.name.endswith((".build.json", ".stats.json")):
        raise UserError(f"{path}: a report written by `smaug data`, not pairs; pass the pair file next to it")
    if suffix in (".jsonl", ".json"):
        numbered = [(f"line {lineno}", row) for lineno, row in read_jsonl_lines(path, "pair")]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
        numbered = [(f"row {i}", row) for i, row in enumerate(table.to_pylist(), 1)]
    else:
        raise UserError(f"{path}: unknown pair file type {path.suffix!r}; use .jsonl or .parquet")
    pairs = []
    for where, row in numbered:
        if "messages" in row or isinstance(row.get("chosen"), list):
            raise UserError(f"{path}: {where} is a conversation (message list), not a prompt/chosen/rejected pair "
                            "of texts; these tools read the pair files `smaug data build` writes")
        for column in PAIR_COLUMNS:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                got = "missing" if column not in row else ("empty" if isinstance(value, str) else
                                                            f"a {type(value).__name__} ({value!r:.40})")
                raise UserError(f"{path}: {where}: `{column}` is {got}; every pair needs non-empty text in "
                                "prompt, chosen and rejected")
        pair = {column: row[column] for column in PAIR_COLUMNS}
        if isinstance(row.get("system"), str) and row["system"]:
            pair["system"] = row["system"]
        pairs.append(pair)
    return pairs
