"""The paper's three pair builders and `build_dataset`: load a source, build, write the build's files, report."""

from __future__ import annotations

import argparse
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_text
from axolotl_dpop.provenance import package_versions, utc_stamp
from smaug.common.commands import non_negative_int, positive_int
from smaug.common.errors import UserError
from smaug.common.files import check_outputs
from smaug.common.hub import check_repo_id
from smaug.data import io
from smaug.data.io import BuildReport, SourceRows, SplitReport
from smaug.data.metamath import build_metamath_pairs, metamath_group
from smaug.data.multiple_choice import build_arc_pairs, build_hellaswag_pairs
from smaug.data.rows import SALT_EVAL_SPLIT, RowTypeError


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
    build: Callable[..., tuple[list[dict[str, str]], dict[str, int]]]
    description: str  # one line, for `smaug data build --help`
    group: Callable[[Any], str | None]  # rows with one key leak into each other: one side of an eval split
    fields: tuple[str | tuple[str, ...], ...]  # what every usable row has; a tuple inside is "one of these"
    rule: str  # how a pair is made, for the dataset card
    # Builder options: name -> {value: the card's sentence for it}, the first value the default.
    options: dict[str, dict[Any, str]] = field(default_factory=dict)
    # The released set's eval split, built when no --source is given: {"rows": N} held out, or {"split": NAME}.
    release_eval: dict[str, Any] = field(default_factory=dict)

    def construction(self, options: dict[str, Any]) -> str:
        return " ".join([self.rule, *(self.options[name][value] for name, value in options.items())])

    def describe_fields(self) -> str:
        return ", ".join(" or ".join(f) if isinstance(f, tuple) else f for f in self.fields)

    def reads(self, row: Any) -> bool:
        return isinstance(row, dict) and all(
            any(n in row for n in f) if isinstance(f, tuple) else f in row for f in self.fields
        )


BUILDERS: dict[str, Builder] = {
    "metamath": Builder(
        "metamath",
        "meta-math/MetaMathQA",
        None,
        build_metamath_pairs,
        "query -> correct response vs. the response with one intermediate result corrupted",
        metamath_group,
        ("query", "response"),
        "prompt = the MetaMathQA `query`; chosen = its `response`; rejected = the same response with ONE "
        "intermediate result corrupted: a number right after an `=` whose left side is a calculation and whose "
        "value is not the final answer's gets its two leading digits changed, keeping its shape (47 -> 52, "
        "$15.20 -> $18.20). Everything else, later steps and the `The answer is:` line included, is untouched "
        '(the paper\'s App. D rule: "one intermediate result corrupted, answer untouched").',
        {
            "fallback": {
                True: "A response without such an intermediate result still gets a pair, as every row does in the "
                "released set: the result of its final calculation, else a number right of an `=`, else any "
                "number before the `####` line is corrupted (the answer line stays correct); a response with no "
                "number is skipped.",
                False: "Responses without an intermediate result are skipped (`no_intermediate_calculation`; "
                "`--intermediate-only`).",
            }
        },
        release_eval={"rows": 1000},  # abacusai/MetaMath_DPO_FewShot: 393,999 train + 1,000 eval pairs
    ),
    "arc": Builder(
        "arc",
        "allenai/ai2_arc",
        "ARC-Challenge",
        build_arc_pairs,
        "question -> correct choice vs. each wrong choice",
        _field("question"),
        ("question", "choices", "answerKey"),
        "prompt = the ARC question; chosen = the text of the correct choice (`answerKey`, a letter or a digit "
        "matched against `choices.label`); rejected = the text of each other choice: one pair per wrong choice "
        "(3 for a four-choice question).",
        release_eval={"split": "validation"},  # abacusai/ARC_DPO_FewShot's 895 eval pairs
    ),
    "hellaswag": Builder(
        "hellaswag",
        "Rowan/hellaswag",
        None,
        build_hellaswag_pairs,
        "context -> correct ending vs. each wrong ending",
        _field("ctx"),
        (("ctx", "ctx_a"), "endings", "label"),
        "prompt = the context; chosen = the correct ending (`label`); rejected = each other ending: one pair per "
        "wrong ending (3).",
        {
            "format": {
                "raw": "Context and endings are the dataset's own `ctx` and `endings`, WikiHow markup included "
                "(the paper's pairs).",
                "lm-eval": "Context and endings are written as lm-eval's hellaswag task writes them "
                "(`activity_label: ctx_a Ctx_b`, WikiHow markup removed; `--format lm-eval`).",
            }
        },
        release_eval={"split": "validation"},  # abacusai/HellaSwag_DPO_FewShot's 30,126 eval pairs
    ),
}


def get_builder(name: str) -> Builder:
    try:
        return BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown builder {name!r}; choose one of: {', '.join(BUILDERS)}") from None


def eval_path(out: str | Path) -> Path:
    """`<stem>.eval<suffix>`, where the eval split goes by default (`mm.parquet` -> `mm.eval.parquet`)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.eval{out.suffix}")


def choose_eval_rows(
    rows: list[Any], n: int, seed: int, group: Callable[[Any], str | None]
) -> tuple[set[int], set[int]]:
    """(eval row indices, row indices in neither split): whole groups drawn in a seeded order until ``n`` rows
    are eval rows; the rest of the last group drawn is left out rather than trained on."""
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
            return chosen, set(members[len(take) :])
    return chosen, set()


def _check_schema(spec: Builder, source: SourceRows, src: str) -> None:
    """Refuse a source none of whose rows has the builder's fields, naming both sets of fields and the builder
    (or pair file) the rows look like."""
    if not source.rows:
        raise UserError(f"source {src} has no rows (an empty file or split); pass the {spec.hub_id} data")
    sample = source.rows[:1000]
    if any(spec.reads(row) for row in sample):
        return
    others = [b.name for b in BUILDERS.values() if b is not spec and any(b.reads(row) for row in sample)]
    hint = f"; these look like {others[0]} rows: `smaug data build {others[0]}`" if others else ""
    if not hint and any(isinstance(row, dict) and set(io.PAIR_COLUMNS) <= set(row) for row in sample):
        hint = "; these are pairs already (prompt/chosen/rejected): train on them or run `smaug data stats`"
    raise UserError(
        f"source {src} does not have the fields the {spec.name} builder reads ({spec.describe_fields()}; the "
        f"{spec.hub_id} schema): its rows have {', '.join(source.fields()) or 'none'}{hint}"
    )


def _count(value: Any, flag: str, check: Callable[[str], int]) -> int:
    """A count given to the Python API, checked by the command line's own type."""
    try:
        return check(str(value))
    except argparse.ArgumentTypeError as err:
        raise UserError(f"{flag} {err}") from None


def build_dataset(
    builder: str,
    out: str | Path,
    *,
    source: str | Path | None = None,
    config: str | None = None,
    split: str | None = None,
    seed: int = 0,
    few_shot: int = 0,
    limit: int | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    progress: bool = True,
    options: dict[str, Any] | None = None,
    eval_rows: int | None = None,
    eval_split: str | None = None,
    eval_out: str | Path | None = None,
    card: bool | str | Path = False,
    source_id: str | None = None,
) -> BuildReport:
    """Build the pairs of ``source`` (default: the builder's Hub dataset) into ``out`` (.jsonl or .parquet).

    The eval split holds out ``eval_rows`` source rows (`choose_eval_rows`) or is built from the source split
    ``eval_split``; without a ``source`` and either, it is the released set's (`Builder.release_eval`). It goes
    to ``eval_out`` (default `eval_path(out)`). ``card``: also a dataset card (True: README.md next to ``out``).
    ``push_to_hub`` uploads the splits with their card; ``source_id`` names the Hub dataset a local ``source``
    is a copy of (for its licence). Every check runs before anything is loaded. The files are written one by
    one, the report (with their sha256) last, so a reader can refuse a set a failed rebuild replaced in part."""
    from smaug.data import card as cards

    spec = get_builder(builder)
    fmt = io.output_format(out)
    resolved = {name: next(iter(values)) for name, values in spec.options.items()}
    for name, value in (options or {}).items():
        if name not in spec.options:
            known = ", ".join(spec.options) or "none"
            raise UserError(f"builder {spec.name} has no option {name!r} (its options: {known})")
        if value not in spec.options[name]:
            allowed = ", ".join(map(str, spec.options[name]))
            raise UserError(f"builder {spec.name}: {name} must be one of {allowed}, got {value!r}")
        resolved[name] = value
    if source is None and eval_rows is None and eval_split is None:
        eval_rows, eval_split = spec.release_eval.get("rows"), spec.release_eval.get("split")
    eval_rows = _count(eval_rows or 0, "--eval-rows", non_negative_int)
    if eval_rows and eval_split:
        raise UserError("--eval-rows and --eval-split are two ways to make the eval split; give one of them")
    eval_file = Path(eval_out) if eval_out is not None else eval_path(out) if eval_rows or eval_split else None
    if eval_file is not None:
        io.output_format(eval_file)
        if not (eval_rows or eval_split):
            raise UserError("--eval-out needs --eval-rows N or --eval-split NAME (which eval split to write)")
    _count(seed, "--seed", non_negative_int)
    _count(few_shot, "--few-shot", non_negative_int)
    if limit is not None:
        _count(limit, "--limit", positive_int)
    if push_to_hub is not None:
        check_repo_id(push_to_hub, "--push-to-hub", example="my-org/metamath-dpo")
    if source is not None and not str(source).strip():
        raise UserError("--source is empty; pass a file, folder or Hub id (or leave it out for the builder's default)")
    src = str(source) if source is not None else spec.hub_id
    local = Path(src).expanduser().exists()
    if source_id is not None:
        check_repo_id(source_id, "--source-id", example=spec.hub_id)
        if not local and source_id != src:
            raise UserError(
                f"--source-id {source_id} names the Hub dataset a local --source is a copy of; the source {src} "
                "is a Hub id already"
            )
    hub_source = source_id or (None if local else src)
    licence = cards.source_license(hub_source, for_push=bool(push_to_hub), source=src) if card or push_to_hub else None
    card_file = cards.card_path(out, card) if card else None
    card_inputs = {"the card template": cards.DATASET_CARD_TEMPLATE, "the licence table": cards.DATASET_LICENSE_TABLE}
    check_outputs(
        {
            "--out": out,
            "the build report": io.report_path(out),
            "the eval split": eval_file,
            "the dataset card": card_file,
        },
        {"--source": src if local else None, **(card_inputs if card_file or push_to_hub else {})},
    )
    if card_file is not None:
        cards.check_card_target(card_file, out)
    cfg = config if config is not None else spec.config

    started = time.perf_counter()
    read = dict(config=cfg, limit=limit, config_given=config is not None)
    train_source = io.read_source(src, split=split or "train", **read)
    _check_schema(spec, train_source, src)
    rows = train_source.rows
    eval_source = io.read_source(src, split=eval_split, flag="--eval-split", **read) if eval_split else None
    if eval_source is not None:
        _check_schema(spec, eval_source, f"{src} ({eval_split})")
    if few_shot and len(rows) <= few_shot:
        raise UserError(f"--few-shot {few_shot} needs more than {few_shot} source rows; {src} has {len(rows)}")
    if eval_rows and eval_rows >= len(rows):
        raise UserError(f"--eval-rows {eval_rows} leaves no training rows: {src} has {len(rows)} rows")
    held_out, left_out = choose_eval_rows(rows, eval_rows, seed, spec.group) if eval_rows else (set(), set())
    train_only = set(range(len(rows))) - held_out - left_out if eval_rows else None
    eval_count = len(held_out) if eval_rows else len(eval_source.rows) if eval_source else 0
    for name, count in (("eval split", eval_count), ("training split", len(train_only or ()))):
        if few_shot and 0 < count <= few_shot:
            raise UserError(
                f"--few-shot {few_shot} needs more than {few_shot} rows in the {name}, which has {count}; lower "
                "--few-shot or change the eval split"
            )

    def build(rows_of: SourceRows, only: set[int] | None) -> tuple[list[dict[str, str]], SplitReport]:
        details: dict[str, Any] = {}
        try:
            pairs, skipped = spec.build(
                rows_of.rows, only=only, report=details, seed=seed, few_shot=few_shot, progress=progress, **resolved
            )
        except RowTypeError as err:
            raise UserError(err.describe(rows_of.where(err.index))) from None
        rows_used = len(rows_of.rows) if only is None else len(only)
        return pairs, SplitReport(
            output="", rows=rows_used, pairs=len(pairs), skipped=skipped, skipped_total=sum(skipped.values()), **details
        )

    pairs, train = build(train_source, train_only)
    if not pairs:
        raise UserError(
            f"no pairs could be built from {src} (skipped: {train.skipped or 'none'}); every row needs usable "
            f"{spec.describe_fields()} ({spec.hub_id}'s schema)"
        )
    eval_pairs, ev = build(eval_source or train_source, None if eval_source else held_out) if eval_file else ([], None)
    if ev is not None:
        ev.output, ev.rows_left_out, ev.source_split = str(eval_file), len(left_out), eval_split
    report = BuildReport(
        builder=spec.name,
        source=src,
        source_id=hub_source,
        source_kind="hub" if not local else "folder" if Path(src).expanduser().is_dir() else "file",
        config=cfg,
        split=split or "train",
        limit=limit,
        seed=seed,
        few_shot=few_shot,
        options=resolved,
        rule=spec.construction(resolved),
        rows_read=len(rows),
        pairs=len(pairs),
        skipped=train.skipped,
        skipped_total=train.skipped_total,
        corrupted=train.corrupted,
        eval=ev,
        output=str(out),
        format=fmt,
        seconds=round(time.perf_counter() - started, 3),
        versions={
            **package_versions("smaug-dpop", "datasets", "pyarrow", "huggingface_hub"),
            "python": platform.python_version(),
        },
        created_at=utc_stamp(),
    )
    dataset_card = None
    if card_file is not None or push_to_hub:
        report.edit_distance = cards.distance_summary(pairs, eval_pairs)
        dataset_card = cards.render_dataset_card(report, licence, repo_id=push_to_hub)
    written = ([io.write_pairs(eval_file, eval_pairs)] if eval_file else []) + [io.write_pairs(out, pairs)]
    if card_file is not None:
        written.append(cards.write_dataset_card(card_file, dataset_card))
        report.card = str(card_file)
    _finish_set(report, written)
    if push_to_hub:  # after the local files are complete, so a failed upload loses nothing
        splits = {"train": pairs, **({"eval": eval_pairs} if ev else {})}
        push_pairs(out, splits, push_to_hub, private=private, card=dataset_card)
        report.pushed_to = push_to_hub
        write_text(io.report_path(out), report.model_dump_json(indent=2) + "\n")
    return report


def _finish_set(report: BuildReport, written: list[Path]) -> None:
    """Record the sha256 of every file written, remove the files of the previous build that this one did not
    write again (still as that build wrote them), then write the report: the set is complete from here on."""
    path = io.report_path(report.output)
    folder = path.parent
    report.files = {os.path.relpath(file, folder): io.sha256(file) for file in written}
    try:
        previous = io.read_report(path).files if path.is_file() else {}
    except UserError:  # a report we cannot read describes nothing we could remove safely
        previous = {}
    for name, digest in previous.items():
        old = folder / name
        if name not in report.files and old.is_file() and io.sha256(old) == digest:
            old.unlink()
    write_text(path, report.model_dump_json(indent=2) + "\n")


def push_pairs(
    path: str | Path, splits: dict[str, list[dict[str, str]]], repo_id: str, private: bool = False, *, card: Any = None
) -> None:
    """Upload ``splits`` as Hub dataset ``repo_id`` with `datasets`' `DatasetDict.push_to_hub` (token from HF_TOKEN
    or the login cache). ``card`` is uploaded first as README.md; `push_to_hub` then adds its `dataset_info` and
    `configs` to the card's metadata in the commit of the data, keeping its text."""
    import datasets

    data = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_list([{c: p[c] for c in io.PAIR_COLUMNS} for p in pairs])
            for name, pairs in splits.items()
        }
    )
    try:
        if card is not None:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            api.upload_file(
                path_or_fileobj=str(card).encode("utf-8"),
                path_in_repo="README.md",
                repo_id=repo_id,
                repo_type="dataset",
                commit_message="Dataset card (smaug data build)",
            )
        data.push_to_hub(repo_id, private=private, commit_message="Upload pairs (smaug data build)")
    except Exception as err:
        raise UserError(
            f"could not push {path} to {repo_id}: {type(err).__name__}: {err}. The files are written; log in "
            "(`hf auth login` or HF_TOKEN) and retry, or upload them yourself"
        ) from err
