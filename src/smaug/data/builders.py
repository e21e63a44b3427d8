"""The three pair builders of the paper and `build_dataset`, which loads a source, builds, writes and reports.

| builder     | default source                        | pairs per usable row                |
|-------------|---------------------------------------|-------------------------------------|
| `metamath`  | `meta-math/MetaMathQA`                | 1 (one intermediate result corrupted) |
| `arc`       | `allenai/ai2_arc`, config ARC-Challenge | one per wrong choice (usually 3)  |
| `hellaswag` | `Rowan/hellaswag`                     | one per wrong ending (3)            |
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError
from smaug.common.files import write_json_atomic
from smaug.common.hub import check_repo_id
from smaug.common.records import package_versions, utc_timestamp
from smaug.data.io import load_source_rows, output_format, write_pairs
from smaug.data.metamath import build_metamath_pairs
from smaug.data.multiple_choice import build_arc_pairs, build_hellaswag_pairs

BuildFn = Callable[..., tuple[list[dict[str, str]], dict[str, int]]]


@dataclass(frozen=True)
class Builder:
    name: str
    hub_id: str
    config: str | None
    build: BuildFn
    description: str


BUILDERS: dict[str, Builder] = {
    "metamath": Builder(
        "metamath", "meta-math/MetaMathQA", None, build_metamath_pairs,
        "query -> correct response vs. the response with one intermediate result corrupted",
    ),
    "arc": Builder(
        "arc", "allenai/ai2_arc", "ARC-Challenge", build_arc_pairs,
        "question -> correct choice vs. each wrong choice",
    ),
    "hellaswag": Builder(
        "hellaswag", "Rowan/hellaswag", None, build_hellaswag_pairs,
        "context -> correct ending vs. each wrong ending",
    ),
}

def get_builder(name: str) -> Builder:
    """The builder called ``name``; a UserError listing the known ones otherwise."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown builder {name!r}; choose one of: {', '.join(BUILDERS)}") from None


def report_path(out: str | Path) -> Path:
    """`<out>.build.json`: the build report that sits next to an output file."""
    out = Path(out)
    return out.with_name(out.name + ".build.json")


def build_dataset(
    builder: str,
    out: str | Path,
    *,
    source: str | Path | None = None,
    config: str | None = None,
    split: str = "train",
    seed: int = 0,
    few_shot: int = 0,
    limit: int | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``source`` (default: the builder's Hub dataset), build pairs, write them to ``out`` (.jsonl or
    .parquet) and the report to `<out>.build.json`, both atomically; optionally push the pairs to the Hub.

    All argument checks happen before anything is loaded. Returns the report (also written to disk)."""
    spec = get_builder(builder)
    fmt = output_format(out)
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if few_shot < 0:
        raise UserError(f"--few-shot must be >= 0, got {few_shot}")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit must be > 0, got {limit}")
    if push_to_hub is not None:
        check_repo_id(push_to_hub, "--push-to-hub", example="my-org/metamath-dpo")
    src = str(source) if source is not None else spec.hub_id
    cfg = config if config is not None else spec.config

    started = time.perf_counter()
    rows = load_source_rows(src, config=cfg, split=split, limit=limit)
    if few_shot and len(rows) <= few_shot:
        raise UserError(f"--few-shot {few_shot} needs more than {few_shot} source rows; {src} has {len(rows)}")
    pairs, skipped = spec.build(rows, seed=seed, few_shot=few_shot, progress=progress)
    if not pairs:
        raise UserError(
            f"no pairs could be built from {src} (skipped: {skipped or 'none'}); check that it is a "
            f"{spec.hub_id} dataset in its original schema"
        )
    write_pairs(out, pairs)
    report = {
        "schema": 1,
        "builder": spec.name,
        "source": src,
        "config": cfg,
        "split": split,
        "limit": limit,
        "seed": seed,
        "few_shot": few_shot,
        "rows_read": len(rows),
        "pairs": len(pairs),
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        "output": str(out),
        "format": fmt,
        "columns": ["prompt", "chosen", "rejected"],
        "axolotl_type": "chatml.prompt_pairs",
        "pushed_to": None,
        "seconds": round(time.perf_counter() - started, 3),
        "versions": {**package_versions("smaug-dpop", "datasets", "pyarrow"), "python": platform.python_version()},
        "created_at": utc_timestamp(),
    }
    write_json_atomic(report_path(out), report, sort_keys=True)
    if push_to_hub:  # after the local files are complete, so a failed upload loses nothing
        push_pairs(out, push_to_hub, private=private)
        report["pushed_to"] = push_to_hub
        write_json_atomic(report_path(out), report, sort_keys=True)
    return report


def push_pairs(path: str | Path, repo_id: str, private: bool = False) -> None:
    """Upload a written pair file to the Hub as dataset ``repo_id`` (split `train`) with `datasets`'
    `push_to_hub`; the token comes from the environment (HF_TOKEN) or the login cache."""
    import datasets

    fmt = "parquet" if output_format(path) == "parquet" else "json"
    ds = datasets.load_dataset(fmt, data_files=str(path), split="train")
    try:
        ds.push_to_hub(repo_id, split="train", private=private)
    except Exception as err:
        raise UserError(
            f"could not push {path} to {repo_id}: {type(err).__name__}: {err}. The file is written; log in "
            "(`hf auth login` or HF_TOKEN) and retry, or upload it yourself"
        ) from err
