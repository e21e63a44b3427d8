"""The three pair builders of the paper and `build_dataset`, which loads a source, builds, writes and reports.

| builder     | default source                        | pairs per usable row                |
|-------------|---------------------------------------|-------------------------------------|
| `metamath`  | `meta-math/MetaMathQA`                | 1 (one intermediate result corrupted) |
| `arc`       | `allenai/ai2_arc`, config ARC-Challenge | one per wrong choice (usually 3)  |
| `hellaswag` | `Rowan/hellaswag`                     | one per wrong ending (3)            |

`build_dataset(..., eval_rows=N)` also holds N source rows out as an eval split, written to a second file:
whole leak groups (MetaMath rephrasings of one problem, one ARC question, one HellaSwag context) are drawn
with a generator seeded by `seed`, and neither split uses the other's rows as few-shot examples.
"""

from __future__ import annotations

import inspect
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smaug.common.errors import UserError
from smaug.common.files import write_json_atomic
from smaug.common.hub import check_repo_id
from smaug.common.records import package_versions, utc_timestamp
from smaug.data.io import load_source_rows, output_format, write_pairs
from smaug.data.metamath import build_metamath_pairs, metamath_group
from smaug.data.multiple_choice import HELLASWAG_FORMATS, build_arc_pairs, build_hellaswag_pairs
from smaug.data.rows import SALT_EVAL_SPLIT

BuildFn = Callable[..., tuple[list[dict[str, str]], dict[str, int]]]


def _field(name: str) -> Callable[[Any], str | None]:
    def key(row: Any) -> str | None:
        value = row.get(name) if isinstance(row, dict) else None
        return value.strip() if isinstance(value, str) and value.strip() else None
    return key


@dataclass(frozen=True)
class Builder:
    name: str
    hub_id: str
    config: str | None
    build: BuildFn
    description: str
    # The row field(s) whose equal values leak into each other (kept on one side of an eval split).
    group: Callable[[Any], str | None]
    # Builder options: name -> (allowed values, default). Passed to `build` as keyword arguments.
    options: dict[str, tuple[tuple, Any]] = field(default_factory=dict)


BUILDERS: dict[str, Builder] = {
    "metamath": Builder(
        "metamath", "meta-math/MetaMathQA", None, build_metamath_pairs,
        "query -> correct response vs. the response with one intermediate result corrupted",
        metamath_group, {"fallback": ((True, False), True)},
    ),
    "arc": Builder(
        "arc", "allenai/ai2_arc", "ARC-Challenge", build_arc_pairs,
        "question -> correct choice vs. each wrong choice", _field("question"),
    ),
    "hellaswag": Builder(
        "hellaswag", "Rowan/hellaswag", None, build_hellaswag_pairs,
        "context -> correct ending vs. each wrong ending",
        _field("ctx"), {"format": (tuple(HELLASWAG_FORMATS), "raw")},
    ),
}

def get_builder(name: str) -> Builder:
    """The builder called ``name``; a UserError listing the known ones otherwise."""
    try:
        return BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown builder {name!r}; choose one of: {', '.join(BUILDERS)}") from None


def eval_path(out: str | Path) -> Path:
    """`<stem>.eval<suffix>`: where the eval split goes by default (`metamath.parquet` -> `metamath.eval.parquet`)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.eval{out.suffix}")


def choose_eval_rows(
    rows: list[Any], n: int, seed: int, group: Callable[[Any], str | None]
) -> tuple[set[int], set[int]]:
    """(eval row indices, row indices kept out of both splits). Whole groups are drawn in a seeded random order
    until `n` rows are eval rows; the rest of the last group drawn is left out rather than trained on."""
    groups: dict[Any, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(group(row) or ("row", index), []).append(index)
    order = list(groups.values())
    random.Random((seed << 8) ^ SALT_EVAL_SPLIT).shuffle(order)
    chosen: set[int] = set()
    for members in order:
        if len(chosen) >= n:
            break
        take = members[: n - len(chosen)]
        chosen.update(take)
        if len(take) < len(members):
            return chosen, set(members[len(take):])
    return chosen, set()


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
    options: dict[str, Any] | None = None,
    eval_rows: int = 0,
    eval_out: str | Path | None = None,
) -> dict[str, Any]:
    """Load ``source`` (default: the builder's Hub dataset), build pairs, write them to ``out`` (.jsonl or
    .parquet) and the report to `<out>.build.json`, both atomically; optionally push the pairs to the Hub.

    ``options``: the builder's own options (`Builder.options`; e.g. metamath `fallback`, hellaswag `format`).
    ``eval_rows`` > 0 holds that many source rows out (`choose_eval_rows`) and writes their pairs to
    ``eval_out`` (default `eval_path(out)`); the report records both splits.
    All argument checks happen before anything is loaded. Returns the report (also written to disk)."""
    spec = get_builder(builder)
    fmt = output_format(out)
    resolved = {name: default for name, (_, default) in spec.options.items()}
    for name, value in (options or {}).items():
        if name not in spec.options:
            known = ", ".join(spec.options) or "none"
            raise UserError(f"builder {spec.name} has no option {name!r} (its options: {known})")
        allowed = spec.options[name][0]
        if value not in allowed:
            raise UserError(f"builder {spec.name}: {name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        resolved[name] = value
    if eval_rows < 0:
        raise UserError(f"--eval-rows must be >= 0, got {eval_rows}")
    eval_file = Path(eval_out) if eval_out is not None else eval_path(out) if eval_rows else None
    if eval_file is not None:
        output_format(eval_file)
        if not eval_rows:
            raise UserError("--eval-out needs --eval-rows N (how many source rows to hold out)")
        if eval_file.resolve() == Path(out).resolve():
            raise UserError(f"--eval-out {eval_file} is the same file as --out")
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
    if eval_rows and eval_rows >= len(rows):
        raise UserError(f"--eval-rows {eval_rows} leaves no training rows: {src} has {len(rows)} rows")
    held_out, left_out = choose_eval_rows(rows, eval_rows, seed, spec.group) if eval_rows else (set(), set())
    train_only = None if not eval_rows else set(range(len(rows))) - held_out - left_out
    details: dict[str, Any] = {}
    build_kwargs = dict(seed=seed, few_shot=few_shot, progress=progress, **resolved)
    if "report" in inspect.signature(spec.build).parameters:
        build_kwargs["report"] = details
    pairs, skipped = spec.build(rows, only=train_only, **build_kwargs)
    if not pairs:
        raise UserError(
            f"no pairs could be built from {src} (skipped: {skipped or 'none'}); check that it is a "
            f"{spec.hub_id} dataset in its original schema"
        )
    eval_report = None
    if eval_rows:
        eval_details: dict[str, Any] = {}
        if "report" in build_kwargs:
            build_kwargs["report"] = eval_details
        eval_pairs, eval_skipped = spec.build(rows, only=held_out, **build_kwargs)
        write_pairs(eval_file, eval_pairs)
        eval_report = {"output": str(eval_file), "rows": len(held_out), "pairs": len(eval_pairs),
                       "skipped": eval_skipped, "skipped_total": sum(eval_skipped.values()), **eval_details,
                       "rows_left_out": len(left_out),
                       "split": "whole leak groups drawn with the seed; the last group's other rows left out"}
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
        "options": resolved,
        "rows_read": len(rows),
        "pairs": len(pairs),
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        **details,
        "eval": eval_report,
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
