"""Pieces shared by the builders: per-row random generators, few-shot prompts, field checks.

A missing, null or empty field is counted under a skip reason (real sources have such rows); a value of the wrong
*type* is a `RowTypeError` naming the row: turning 42 into the prompt "42" would train on what the source never said.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from smaug.common.errors import UserError

# Separate streams for the different random choices made for one row.
SALT_CORRUPT = 1
SALT_FEW_SHOT = 2
SALT_EVAL_SPLIT = 4  # 3 is smaug.data.synthetic's


def row_rng(seed: int, index: int, salt: int) -> random.Random:
    """A generator that depends only on (seed, row index, purpose): no global state, so a row's result does
    not change when other rows are added, removed or processed in another order."""
    return random.Random((seed << 40) ^ (salt << 36) ^ index)


class RowTypeError(UserError):
    """A source field holds a value of the wrong type. ``index`` is the row's position in the rows the builder
    was given; `build_dataset` replaces "row N" by the file and line it came from (`describe`)."""

    def __init__(self, index: int, field: str, value: Any, expected: str):
        self.index, self.field, self.value, self.expected = index, field, value, expected
        super().__init__(self.describe(f"row {index + 1}"))

    def describe(self, where: str) -> str:
        shown = repr(self.value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return (
            f"{where}: `{self.field}` is a {type(self.value).__name__} ({shown}), not {self.expected}; "
            "fix the source (values are used as they are, never converted)"
        )


def typed_field(
    row: dict[str, Any], name: str, index: int, types: tuple[type, ...], expected: str, field: str | None = None
) -> Any:
    """``row[name]`` (None when missing or null); a RowTypeError when it is not one of ``types`` (a bool never
    counts as an int). ``field`` names it in the message when it is nested (`choices.text[2]`)."""
    value = row.get(name)
    if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
        raise RowTypeError(index, field or name, value, expected)
    return value


def check_type(value: Any, index: int, field: str, types: tuple[type, ...], expected: str) -> Any:
    """``value`` itself, checked as `typed_field` checks a field (for list items and nested values)."""
    return typed_field({"v": value}, "v", index, types, expected, field)


def text_field(row: dict[str, Any], name: str, counts: Counter, index: int) -> str | None:
    """The stripped string in ``row[name]``, or None after counting why it is unusable (`missing_field:<name>`,
    `empty:<name>`); a RowTypeError when it holds something other than text."""
    value = typed_field(row, name, index, (str,), "text")
    if value is None:
        counts[f"missing_field:{name}"] += 1
        return None
    value = value.strip()
    if not value:
        counts[f"empty:{name}"] += 1
        return None
    return value


def source_records(
    rows: Sequence[Any], only: Collection[int] | None, counts: Counter, progress: bool, desc: str
) -> Iterator[tuple[int, dict]]:
    """(index, row) for each row to build: those in ``only`` (all when None) that are records; anything else is
    counted as `not_a_record`."""
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc=desc, unit="row", mininterval=1.0)
    for index, row in enumerate(rows):
        if only is not None and index not in only:
            continue
        if not isinstance(row, dict):
            counts["not_a_record"] += 1
            continue
        yield index, row


def qa_example(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}"


def qa_query(question: str) -> str:
    # Ends like the examples' `Answer:` lines (and the released abacusai *_DPO_FewShot prompts): a base model
    # trained on raw prompt + completion text sees the completion where an answer goes.
    return f"Question: {question}\nAnswer:"


def with_few_shot(
    valid: list[tuple[int, str, str, Any, list[dict[str, str]]]],
    seed: int,
    k: int,
    example: Callable[[str, str], str],
    query: Callable[[str], str],
) -> list[dict[str, str]]:
    """The pairs of the ``valid`` rows (index, question, answer, leak group, pairs), each prompt after ``k`` solved
    examples from other rows, separated by blank lines. Examples are drawn with the row's own generator, never
    from its leak group (the row itself, a rephrasing of it); rejection sampling is cheap while the pool is much
    larger than k, a shuffle of the rest covers the other case."""
    if not k:
        return [pair for *_, pairs in valid for pair in pairs]
    out = []
    for index, question, _, group, pairs in valid:
        rng, chosen, seen = row_rng(seed, index, SALT_FEW_SHOT), [], set()
        for i in (rng.randrange(len(valid)) for _ in range(8 * k)):
            if len(chosen) < k and i not in seen and valid[i][3] != group:
                chosen.append(i)
            seen.add(i)
        rest = [i for i in range(len(valid)) if i not in seen and valid[i][3] != group] if len(chosen) < k else []
        rng.shuffle(rest)
        shots = [valid[i] for i in chosen + rest[: k - len(chosen)]]
        prompt = "\n\n".join([*(example(v[1], v[2]) for v in shots), query(question)]) if shots else question
        out.extend({**pair, "prompt": prompt} for pair in pairs)
    return out
