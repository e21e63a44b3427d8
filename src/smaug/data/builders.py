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

import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_json
from axolotl_dpop.provenance import package_versions, utc_stamp
from smaug.common.errors import UserError
from smaug.common.files import check_outputs
from smaug.common.hub import check_repo_id
from smaug.data.io import PAIR_COLUMNS, SourceRows, output_format, read_source, write_pairs
from smaug.data.metamath import build_metamath_pairs, metamath_group
from smaug.data.multiple_choice import HELLASWAG_FORMATS, build_arc_pairs, build_hellaswag_pairs
from smaug.data.rows import SALT_EVAL_SPLIT, RowTypeError, whole_count

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
    description: str  # one line, for `smaug data build --help`
    # The row field(s) whose equal values leak into each other (kept on one side of an eval split).
    group: Callable[[Any], str | None]
    # Builder options: name -> (allowed values, default). Passed to `build` as keyword arguments.
    options: dict[str, tuple[tuple, Any]] = field(default_factory=dict)
    # The source fields every usable row has; a tuple inside is "one of these".
    fields: tuple[str | tuple[str, ...], ...] = ()
    # How a pair is made, for the dataset card (the one home of this text): the rule, then a sentence per
    # option value (`option_rules[name][value]`).
    rule: str = ""
    option_rules: dict[str, dict[Any, str]] = field(default_factory=dict)

    def construction(self, options: dict[str, Any]) -> str:
        """The rule and the sentences of the options in effect."""
        extra = [
            self.option_rules[name][value]
            for name, value in options.items()
            if value in self.option_rules.get(name, {})
        ]
        return " ".join([self.rule, *extra])

    def describe_fields(self) -> str:
        return ", ".join(" or ".join(f) if isinstance(f, tuple) else f for f in self.fields)

    def reads(self, row: Any) -> bool:
        """Whether ``row`` has every field this builder needs (values unchecked)."""
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
        {"fallback": ((True, False), True)},
        fields=("query", "response"),
        rule="prompt = the MetaMathQA `query`; chosen = its `response`; rejected = the same response with ONE "
        "intermediate result corrupted: a number right after an `=` whose left side is a calculation and "
        "whose value is not the final answer's gets its two leading digits changed, keeping its shape "
        "(47 -> 52, $15.20 -> $18.20). Everything else, later steps and the `The answer is:` line "
        "included, is untouched (the paper's App. D rule: \"one intermediate result corrupted, answer "
        'untouched").',
        option_rules={
            "fallback": {
                True: "A response without such an intermediate result still gets a pair, as every row does in the "
                "released set: the result of its final calculation, else a number right of an `=`, else any "
                "number before the `####` line is corrupted (the answer line stays correct); a response with "
                "no number is skipped.",
                False: "Responses without an intermediate result are skipped (`no_intermediate_calculation`; "
                "`--intermediate-only`).",
            }
        },
    ),
    "arc": Builder(
        "arc",
        "allenai/ai2_arc",
        "ARC-Challenge",
        build_arc_pairs,
        "question -> correct choice vs. each wrong choice",
        _field("question"),
        fields=("question", "choices", "answerKey"),
        rule="prompt = the ARC question; chosen = the text of the correct choice (`answerKey`, a letter or a "
        "digit matched against `choices.label`); rejected = the text of each other choice: one pair per "
        "wrong choice (3 for a four-choice question).",
    ),
    "hellaswag": Builder(
        "hellaswag",
        "Rowan/hellaswag",
        None,
        build_hellaswag_pairs,
        "context -> correct ending vs. each wrong ending",
        _field("ctx"),
        {"format": (tuple(HELLASWAG_FORMATS), "raw")},
        fields=(("ctx", "ctx_a"), "endings", "label"),
        rule="prompt = the context; chosen = the correct ending (`label`); rejected = each other ending: one "
        "pair per wrong ending (3).",
        option_rules={
            "format": {
                "raw": "Context and endings are the dataset's own `ctx` and `endings`, WikiHow markup included "
                "(the paper's pairs).",
                "lm-eval": "Context and endings are written as lm-eval's hellaswag task writes them "
                "(`activity_label: ctx_a Ctx_b`, WikiHow markup removed; `--format lm-eval`).",
            }
        },
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
            return chosen, set(members[len(take) :])
    return chosen, set()


def report_path(out: str | Path) -> Path:
    """`<out>.build.json`: the build report that sits next to an output file."""
    out = Path(out)
    return out.with_name(out.name + ".build.json")


def _is_local(source: str) -> bool:
    return Path(source).expanduser().exists()


def _check_schema(spec: Builder, source: SourceRows, src: str) -> None:
    """Refuse a source none of whose rows has the fields the builder reads, naming both sets of fields and the
    builder (or pair file) the rows look like."""
    if not source.rows:
        raise UserError(f"source {src} has no rows (an empty file or split); pass the {spec.hub_id} data")
    sample = source.rows[:1000]
    if any(spec.reads(row) for row in sample):
        return
    found = ", ".join(source.fields()) or "none"
    hint = ""
    others = [b.name for b in BUILDERS.values() if b is not spec and any(b.reads(row) for row in sample)]
    if others:
        hint = f"; these look like {others[0]} rows: `smaug data build {others[0]}`"
    elif any(isinstance(row, dict) and set(PAIR_COLUMNS) <= set(row) for row in sample):
        hint = "; these are pairs already (prompt/chosen/rejected): train on them or run `smaug data stats`"
    raise UserError(
        f"source {src} does not have the fields the {spec.name} builder reads ({spec.describe_fields()}; "
        f"the {spec.hub_id} schema): its rows have {found}{hint}"
    )


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
    eval_rows: int = 0,
    eval_out: str | Path | None = None,
    card: bool | str | Path = False,
    source_id: str | None = None,
) -> dict[str, Any]:
    """Load ``source`` (default: the builder's Hub dataset), build pairs, write them to ``out`` (.jsonl or
    .parquet) and the report to `<out>.build.json`, both atomically; optionally push the pairs to the Hub.

    ``options``: the builder's own options (`Builder.options`; e.g. metamath `fallback`, hellaswag `format`).
    ``eval_rows`` > 0 holds that many source rows out (`choose_eval_rows`) and writes their pairs to
    ``eval_out`` (default `eval_path(out)`); the report records both splits. ``split`` (default `train`) and a
    ``config`` that is given must exist in a folder or Hub source; a single file is one split.
    ``card``: also write a dataset card (`smaug.data.card`): True for README.md next to ``out``, or a path.
    ``push_to_hub`` uploads the pairs (and the eval split) with their card; ``source_id`` names the Hub dataset a
    local ``source`` is a copy of, so the card can state its licence (a push needs a known licence).
    All argument checks, the licence of a push and the refusal of outputs that would overwrite an input or
    cannot be written happen before anything is loaded. Returns the report (also written to disk)."""
    from smaug.data import card as cards

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
    whole_count(eval_rows, "--eval-rows", 0)
    eval_file = Path(eval_out) if eval_out is not None else eval_path(out) if eval_rows else None
    if eval_file is not None:
        output_format(eval_file)
        if not eval_rows:
            raise UserError("--eval-out needs --eval-rows N (how many source rows to hold out)")
    whole_count(seed, "--seed", 0)
    whole_count(few_shot, "--few-shot", 0)
    if limit is not None:
        whole_count(limit, "--limit", 1)
    if push_to_hub is not None:
        check_repo_id(push_to_hub, "--push-to-hub", example="my-org/metamath-dpo")
    if source is not None and not str(source).strip():
        raise UserError("--source is empty; pass a file, folder or Hub id (or leave it out for the builder's default)")
    src = str(source) if source is not None else spec.hub_id
    local = _is_local(src)
    if source_id is not None:
        check_repo_id(source_id, "--source-id", example=spec.hub_id)
        if not local and source_id != src:
            raise UserError(
                f"--source-id {source_id} names the Hub dataset a local --source is a copy of; "
                f"the source {src} is a Hub id already"
            )
    hub_source = source_id or (None if local else src)
    licence = cards.source_license(hub_source, for_push=bool(push_to_hub), source=src) if card or push_to_hub else None
    card_file = cards.card_path(out, card) if card else None
    card_inputs = (
        {"the card template": cards.DATASET_CARD_TEMPLATE, "the licence table": cards.DATASET_LICENSE_TABLE}
        if card_file or push_to_hub
        else {}
    )
    check_outputs(
        {
            "--out": out,
            "the build report": report_path(out),
            "the eval split": eval_file,
            "the dataset card": card_file,
        },
        {"--source": src if local else None, **card_inputs},
    )
    if card_file is not None:
        cards.check_card_target(card_file, out)
    cfg = config if config is not None else spec.config

    started = time.perf_counter()
    source_rows = read_source(src, config=cfg, split=split, limit=limit, config_given=config is not None)
    rows = source_rows.rows
    _check_schema(spec, source_rows, src)
    if few_shot and len(rows) <= few_shot:
        raise UserError(f"--few-shot {few_shot} needs more than {few_shot} source rows; {src} has {len(rows)}")
    if eval_rows and eval_rows >= len(rows):
        raise UserError(f"--eval-rows {eval_rows} leaves no training rows: {src} has {len(rows)} rows")
    held_out, left_out = choose_eval_rows(rows, eval_rows, seed, spec.group) if eval_rows else (set(), set())
    train_only = None if not eval_rows else set(range(len(rows))) - held_out - left_out
    for name, members in (("eval split", held_out), ("training split", train_only)):
        if few_shot and members is not None and 0 < len(members) <= few_shot:
            raise UserError(
                f"--few-shot {few_shot} needs more than {few_shot} rows in the {name}, which has "
                f"{len(members)} (--eval-rows {eval_rows}); lower --few-shot or change --eval-rows"
            )
    details: dict[str, Any] = {}
    build_kwargs = dict(seed=seed, few_shot=few_shot, progress=progress, **resolved)
    try:
        pairs, skipped = spec.build(rows, only=train_only, report=details, **build_kwargs)
        if not pairs:
            raise UserError(
                f"no pairs could be built from {src} (skipped: {skipped or 'none'}); every row needs usable "
                f"{spec.describe_fields()} ({spec.hub_id}'s schema)"
            )
        eval_report = eval_pairs = None
        if eval_rows:
            eval_details: dict[str, Any] = {}
            eval_pairs, eval_skipped = spec.build(rows, only=held_out, report=eval_details, **build_kwargs)
    except RowTypeError as err:
        raise UserError(err.describe(source_rows.where(err.index))) from None
    if eval_rows:
        write_pairs(eval_file, eval_pairs)
        eval_report = {
            "output": str(eval_file),
            "rows": len(held_out),
            "pairs": len(eval_pairs),
            "skipped": eval_skipped,
            "skipped_total": sum(eval_skipped.values()),
            **eval_details,
            "rows_left_out": len(left_out),
            "split": "whole leak groups drawn with the seed; the last group's other rows left out",
        }
    write_pairs(out, pairs)
    report = {
        "schema": 1,
        "builder": spec.name,
        "source": src,
        "source_id": hub_source,
        "source_kind": "hub" if not local else "folder" if Path(src).expanduser().is_dir() else "file",
        "config": cfg,
        "split": split or "train",
        "limit": limit,
        "seed": seed,
        "few_shot": few_shot,
        "options": resolved,
        "rule": spec.construction(resolved),
        "rows_read": len(rows),
        "pairs": len(pairs),
        "skipped": skipped,
        "skipped_total": sum(skipped.values()),
        **details,
        "eval": eval_report,
        "output": str(out),
        "format": fmt,
        "columns": list(PAIR_COLUMNS),
        "axolotl_type": "chatml.prompt_pairs",
        "card": None,
        "pushed_to": None,
        "seconds": round(time.perf_counter() - started, 3),
        "versions": {
            **package_versions("smaug-dpop", "datasets", "pyarrow", "huggingface_hub"),
            "python": platform.python_version(),
        },
        "created_at": utc_stamp(),
    }
    dataset_card = None
    if card_file is not None or push_to_hub:
        report["edit_distance"] = cards.distance_summary(pairs, eval_pairs)
        dataset_card = cards.render_dataset_card(report, licence, repo_id=push_to_hub)
    if card_file is not None:
        cards.write_dataset_card(card_file, dataset_card)
        report["card"] = str(card_file)
    write_json(report_path(out), report, sort_keys=True)
    if push_to_hub:  # after the local files are complete, so a failed upload loses nothing
        push_pairs(
            out,
            {"train": pairs, **({"eval": eval_pairs} if eval_rows else {})},
            push_to_hub,
            private=private,
            card=dataset_card,
        )
        report["pushed_to"] = push_to_hub
        write_json(report_path(out), report, sort_keys=True)
    return report


def push_pairs(
    path: str | Path, splits: dict[str, list[dict[str, str]]], repo_id: str, private: bool = False, *, card: Any = None
) -> None:
    """Upload the pairs just written to ``path`` (``splits``: `train`, and `eval` when built) to the Hub as
    dataset ``repo_id`` with `datasets`' `DatasetDict.push_to_hub`; the token comes from the environment
    (HF_TOKEN) or the login cache. ``card`` (a `DatasetCard`) is uploaded first as the repo's README.md: `push_to_hub`
    then adds its `dataset_info` and `configs` to that card's metadata in the same commit as the data,
    keeping the card's text (it rewrites an existing README.md's metadata, never its body)."""
    import datasets

    data = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_list([{c: p[c] for c in PAIR_COLUMNS} for p in pairs])
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
            f"could not push {path} to {repo_id}: {type(err).__name__}: {err}. The file is written; log in "
            "(`hf auth login` or HF_TOKEN) and retry, or upload it yourself"
        ) from err
