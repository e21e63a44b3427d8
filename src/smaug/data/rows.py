"""Pieces shared by the builders: per-row random generators, few-shot prompts, field checks.

Field checks tell two kinds of bad row apart. A missing, null or empty field, or content the rule cannot use, is
counted under a skip reason and the row is left out (real sources have such rows: HellaSwag's test split has no
labels). A value of the wrong *type* (a number where text belongs, text where a list belongs) is refused with a
`RowTypeError` naming the row: turning 42 into the prompt "42" would train on something the source never said.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

from smaug.common.errors import UserError

# Separate streams for the different random choices made for one row.
SALT_CORRUPT = 1
SALT_FEW_SHOT = 2
SALT_EVAL_SPLIT = 4  # 3 is smaug.data.synthetic's


def row_rng(seed: int, index: int, salt: int) -> random.Random:
    """A generator that depends only on (seed, row index, purpose): no global state, so a row's result does
    not change when other rows are added, removed or processed in another order."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
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


def source_records(rows: Iterable[Any], only: Collection[int] | None, counts: Counter) -> Iterator[tuple[int, dict]]:
    """(index, row) for each row a builder should look at: those in ``only`` (all when None) that are records;
    anything else is counted as `not_a_record`."""
    for index, row in enumerate(rows):
        if only is not None and index not in only:
            continue
        if not isinstance(row, dict):
            counts["not_a_record"] += 1
            continue
        yield index, row


def few_shot_prompt(
    examples: Sequence[tuple[str, str]],
    query: str,
    fmt_example: Callable[[str, str], str],
    fmt_query: Callable[[str], str],
) -> str:
    """K solved examples, then the query, separated by blank lines. With no examples: the bare query."""
    if not examples:
        return query
    return "\n\n".join([*(fmt_example(q, a) for q, a in examples), fmt_query(query)])


def qa_example(question: str, answer: str) -> str:
    return f"Question: {question}\nAnswer: {answer}"


def qa_query(question: str) -> str:
    # Ends like the solved examples' `Answer:` lines (and like the released abacusai *_DPO_FewShot prompts), so
    # a base model trained on raw prompt + completion text sees the completion where an answer goes.
    return f"Question: {question}\nAnswer:"


def pick_few_shot(pool_size: int, k: int, seed: int, index: int, exclude: Callable[[int], bool]) -> list[int]:
    """``k`` distinct pool indices for row ``index``, drawn with that row's own generator, skipping those for
    which ``exclude(i)`` is true (the row itself; for MetaMath also rephrasings of the same question, which
    would leak the answer). Returns fewer than ``k`` only when the pool runs out."""
    if k <= 0:
        return []
    rng = row_rng(seed, index, SALT_FEW_SHOT)
    chosen: list[int] = []
    seen: set[int] = set()
    # Rejection sampling is cheap while the pool is much larger than k; fall back to a full shuffle otherwise.
    for _ in range(8 * k):
        i = rng.randrange(pool_size)
        if i in seen:
            continue
        seen.add(i)
        if not exclude(i):
            chosen.append(i)
            if len(chosen) == k:
                return chosen
    rest = [i for i in range(pool_size) if i not in seen and not exclude(i)]
    rng.shuffle(rest)
    return chosen + rest[: k - len(chosen)]


def sorted_counts(counts: Counter) -> dict[str, int]:
    return {key: counts[key] for key in sorted(counts)}


def count_bound(minimum: int) -> str:
    return "> 0" if minimum == 1 else f">= {minimum}"


def whole_count(value: Any, flag: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; a UserError naming ``flag`` for nan, inf, 1.5, "x" or too small."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be a whole number {count_bound(minimum)}, got {value!r}")
    if value < minimum:
        raise UserError(f"{flag} must be {count_bound(minimum)}, got {value}")
    return value
