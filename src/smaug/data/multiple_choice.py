"""ARC-Challenge and HellaSwag preference pairs: the correct choice vs. each usable wrong one, in choice order.
Skip reasons are counted per row or per wrong choice; ``only`` and ``report`` work as in `build_metamath_pairs`."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from smaug.data.rows import (
    check_type,
    qa_example,
    qa_query,
    source_records,
    text_field,
    typed_field,
    with_few_shot,
)

# An answer key or label is an index written as text ("B", "2") or, in some copies, as an integer.
_KEY_TYPES = (str, int)
_KEY = "a label (text or integer)"

_LETTERS = "ABCDEFGHIJ"


def arc_answer_index(labels: Sequence[str], answer_key: str) -> int | None:
    """Index of the correct choice. ai2_arc uses letter labels (A-E) for most questions and digit labels
    ("1".."4") for some; a key written in the other style than the labels is mapped by position."""
    key = answer_key.strip()
    if key in labels:
        return list(labels).index(key)
    if key.isdigit() and 1 <= int(key) <= len(labels):
        return int(key) - 1
    if len(key) == 1 and key.upper() in _LETTERS and _LETTERS.index(key.upper()) < len(labels):
        return _LETTERS.index(key.upper())
    return None


def _choice_pairs(index: int, prompt: str, options: list[str], answer: int, counts: Counter, valid: list) -> None:
    """One pair per usable wrong option (counted per option otherwise), added to ``valid`` with the row."""
    correct = options[answer]
    if not correct:
        counts["empty:chosen"] += 1
        return
    pairs = []
    for j, option in enumerate(options):
        if j != answer and not option:
            counts["empty:rejected"] += 1
        elif j != answer and option == correct:
            counts["rejected_equals_chosen"] += 1
        elif j != answer:
            pairs.append({"prompt": prompt, "chosen": correct, "rejected": option})
    if pairs:
        valid.append((index, prompt, correct, prompt, pairs))


def build_arc_pairs(
    rows: Sequence[dict[str, Any]],
    seed: int = 0,
    few_shot: int = 0,
    progress: bool = False,
    only: Collection[int] | None = None,
    report: dict | None = None,  # report: no details beyond the counts
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Pairs from `allenai/ai2_arc` rows (`id`, `question`, `choices{text,label}`, `answerKey`).

    prompt = the question (after ``few_shot`` solved `Question:/Answer:` examples when > 0), chosen = the
    correct choice's text, rejected = each other choice's text. Returns (pairs, skip counts by reason)."""
    counts: Counter = Counter()
    valid = []
    for index, row in source_records(rows, only, counts, progress, "arc pairs"):
        question = text_field(row, "question", counts, index)
        if question is None:
            continue
        choices = typed_field(row, "choices", index, (dict,), "a mapping {text: [...], label: [...]}")
        if choices is None:
            counts["missing_field:choices"] += 1
            continue
        texts = typed_field(choices, "text", index, (list,), "a list of texts", "choices.text")
        labels = typed_field(choices, "label", index, (list,), "a list of labels", "choices.label")
        if texts is None or labels is None or len(texts) != len(labels) or len(texts) < 2:
            counts["malformed_choices"] += 1
            continue
        for j, (text, label) in enumerate(zip(texts, labels)):
            check_type(text, index, f"choices.text[{j}]", (str,), "text")
            check_type(label, index, f"choices.label[{j}]", _KEY_TYPES, _KEY)
        key = typed_field(row, "answerKey", index, _KEY_TYPES, _KEY)
        if key is None:
            counts["missing_field:answerKey"] += 1
            continue
        answer = arc_answer_index([str(label) for label in labels], str(key))
        if answer is None:
            counts["malformed_answer"] += 1
            continue
        _choice_pairs(index, question, [t.strip() if t else "" for t in texts], answer, counts, valid)
    return with_few_shot(valid, seed, few_shot, qa_example, qa_query), dict(sorted(counts.items()))


def hellaswag_preprocess(text: str) -> str:
    """The clean-up lm-eval's hellaswag task applies: WikiHow markup such as `[header]`/`[step]` removed,
    `[title]` turned into a sentence break, doubled spaces collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def hellaswag_context(row: dict[str, Any]) -> str | None:
    """`activity_label: ctx_a Ctx_b` as lm-eval builds it (falling back to `ctx`), preprocessed."""
    ctx_a, ctx_b = row.get("ctx_a"), row.get("ctx_b")
    if isinstance(ctx_a, str) and ctx_a.strip():
        ctx = ctx_a.strip() + (" " + ctx_b.strip().capitalize() if isinstance(ctx_b, str) and ctx_b.strip() else "")
    elif isinstance(row.get("ctx"), str) and row["ctx"].strip():
        ctx = row["ctx"].strip()
    else:
        return None
    label = row.get("activity_label")
    if isinstance(label, str) and label.strip():
        ctx = f"{label.strip()}: {ctx}"
    return hellaswag_preprocess(ctx)


def hellaswag_raw_context(row: dict[str, Any]) -> str | None:
    """The dataset's own `ctx` as it is (= `ctx_a ctx_b`, built from those when `ctx` is missing)."""
    ctx = row.get("ctx")
    if isinstance(ctx, str) and ctx.strip():
        return ctx.strip()
    parts = [row.get(k).strip() for k in ("ctx_a", "ctx_b") if isinstance(row.get(k), str) and row.get(k).strip()]
    return " ".join(parts) or None


# `format` of build_hellaswag_pairs: how context and endings are written.
HELLASWAG_FORMATS = {
    # The Smaug paper's pairs: the raw `ctx` ("... smiles. then") and the raw endings.
    "raw": (hellaswag_raw_context, lambda ending: ending.strip()),
    # lm-eval's hellaswag task: "activity_label: ctx_a Ctx_b", WikiHow markup cleaned, so training and the
    # leaderboard evaluation see the same text.
    "lm-eval": (hellaswag_context, hellaswag_preprocess),
}


def build_hellaswag_pairs(
    rows: Sequence[dict[str, Any]],
    seed: int = 0,
    few_shot: int = 0,
    progress: bool = False,
    format: str = "raw",
    only: Collection[int] | None = None,
    report: dict | None = None,  # as build_arc_pairs
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Pairs from `Rowan/hellaswag` rows (`activity_label`, `ctx_a`, `ctx_b`, `ctx`, `endings`, `label`).

    prompt = the context (after ``few_shot`` examples `context ending` when > 0), chosen = the correct
    ending, rejected = each of the other endings, written as ``format`` says (`HELLASWAG_FORMATS`: `raw`, the
    paper's, or `lm-eval`). `label` is the string "0".."3" in the real data and empty in the test split
    (skipped as `malformed_answer`)."""
    if format not in HELLASWAG_FORMATS:
        raise ValueError(f"unknown hellaswag format {format!r}; use one of {', '.join(HELLASWAG_FORMATS)}")
    make_context, clean_ending = HELLASWAG_FORMATS[format]
    counts: Counter = Counter()
    valid = []
    for index, row in source_records(rows, only, counts, progress, "hellaswag pairs"):
        for name in ("activity_label", "ctx_a", "ctx_b", "ctx"):
            typed_field(row, name, index, (str,), "text")
        context = make_context(row)
        if context is None:
            counts["missing_field:ctx"] += 1
            continue
        endings = typed_field(row, "endings", index, (list,), "a list of texts")
        if endings is None:
            counts["missing_field:endings"] += 1
            continue
        if len(endings) < 2:
            counts["malformed_endings"] += 1
            continue
        for j, ending in enumerate(endings):
            check_type(ending, index, f"endings[{j}]", (str,), "text")
        label = typed_field(row, "label", index, _KEY_TYPES, _KEY)
        if label is None:
            counts["missing_field:label"] += 1
            continue
        label_text = str(label).strip()
        if not label_text.isdigit() or int(label_text) >= len(endings):
            counts["malformed_answer"] += 1
            continue
        options = [clean_ending(e) if e else "" for e in endings]
        _choice_pairs(index, context, options, int(label_text), counts, valid)
    return with_few_shot(valid, seed, few_shot, lambda q, a: f"{q} {a}", lambda q: q), dict(sorted(counts.items()))
