"""Reading sources through `datasets.load_dataset` and writing pair files atomically.

A source is a Hub id (the default for each builder) or a local JSON/JSONL/Parquet file or folder. Outputs are
JSON Lines (`.jsonl`, `.json`) or Parquet (`.parquet`) with exactly the columns `prompt`, `chosen`, `rejected`
(what axolotl's `chatml.prompt_pairs` DPO type reads). Every file is written to a temp file in the same folder
and moved into place with `os.replace`, so a failure never leaves a half-written output behind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smaug.atomic import atomic_write, write_jsonl_atomic  # noqa: F401  (re-exported: builders, reproduce)
from smaug.errors import UserError

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


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Pretty JSON (sorted keys, trailing newline), written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


def load_pairs_table(path: str | Path):
    """A pair file or folder (JSONL/Parquet, ours or e.g. a downloaded `abacusai/*_DPO_FewShot`) as an Arrow
    table with the three pair columns; a UserError naming what is missing."""
    import datasets

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a .jsonl/.parquet pair file or a folder of them")
    try:
        if path.is_file():
            builder = _LOCAL_FORMATS.get(path.suffix.lower())
            if builder is None:
                raise UserError(f"{path}: unknown file type {path.suffix!r}; use .jsonl or .parquet")
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(str(path), split="train")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"could not read pairs from {path}: {type(err).__name__}: {err}") from err
    missing = [c for c in PAIR_COLUMNS if c not in ds.column_names]
    if missing:
        raise UserError(
            f"{path} has no column(s) {', '.join(missing)} (has {', '.join(ds.column_names)}); "
            "a pair dataset needs prompt, chosen and rejected"
        )
    return ds.with_format("arrow")[:].select(list(PAIR_COLUMNS))
