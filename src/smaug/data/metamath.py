"""MetaMath preference pairs: the correct response vs. the same response with ONE intermediate result wrong.

The rule (paper App. D: "$25 + $15.20 + $6.80 = $47" becomes "= $52", final answer untouched), precisely:

1. The response must end with a final-answer line ``The answer is: X`` (MetaMathQA's format); the text before
   its last occurrence is the *body*. A response without it is skipped as `malformed_answer`.
2. A *candidate* is a number written directly after an ``=`` in the body (optionally after ``$`` or ``\\$``),
   such as ``= 47``, ``= $15.20``, ``= 1,200``, ``= -3``, ``= 20%``, where
   - the number is not glued to letters/digits (``= 2x`` is algebra, not a result),
   - the number is not followed by an arithmetic operator (``= 10 - 3 = 7``: only 7 is a result),
   - the left-hand side (back to the previous ``=``, line break or sentence end) contains a digit and an
     arithmetic operator (``+ - * / x × ÷ ^``, ``\\times``, ``\\cdot``, ``\\div``, ``\\frac``): it is a calculation,
   - its value differs from the final answer's value (that step is the *final* calculation, not an
     intermediate one; comparing values means ``$752.00`` and ``752`` are the same).
3. One candidate is picked with the row's own generator (seeded by (seed, row index)) and replaced by a
   different value of the same shape: integers stay integers, decimals keep their number of places, thousands
   separators and signs are kept, and the change lands in the two leading digits (47 -> 52, $47.00 -> $52.00,
   1,200 -> 1,500) so the wrong value is plausible; it is never equal to the old value or to the final answer.
   Nothing else changes: later steps that reuse the correct value, the ``####`` line and the final answer
   line are left as they were.
4. Rows with no candidate are skipped as `no_intermediate_calculation`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from smaug.data.rows import (
    SALT_CORRUPT,
    few_shot_prompt,
    pick_few_shot,
    qa_example,
    qa_query,
    row_rng,
    sorted_counts,
    text_field,
)

ANSWER_MARKER = "The answer is:"

_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_RESULT = re.compile(
    r"=[ \t]*(?:\\?\$[ \t]*)?"
    rf"(?P<num>{_NUMBER})"
    r"(?!\w|\.\d)"  # not 2x, not 5th, not 3.4.5
    r"(?![ \t]*(?:[-+*/×÷^·(]|\\times|\\cdot|\\div|x[ \t]*\$?\d))"  # not the start of a longer expression
)
_OPERATOR = re.compile(r"[-+*/×÷^·]|\\times|\\cdot|\\div|\\frac|\d\s*x\s*\$?\d")
_DIGIT = re.compile(r"\d")
_LHS_WINDOW = 160


def parse_number(text: str) -> Decimal | None:
    """`$1,200.50` -> Decimal('1200.50'); None when the text is not a plain number."""
    cleaned = text.strip().strip("$").replace("\\$", "").replace(",", "").strip().rstrip(".")
    try:
        return Decimal(cleaned)
    except (InvalidOperation, ValueError):
        return None


def split_final_answer(response: str) -> tuple[str, str] | None:
    """(body, final answer text) or None when there is no non-empty `The answer is:` line."""
    pos = response.rfind(ANSWER_MARKER)
    if pos < 0:
        return None
    answer = response[pos + len(ANSWER_MARKER) :].strip()
    if not answer:
        return None
    return response[:pos], answer


def intermediate_results(body: str, answer_value: Decimal | None) -> list[re.Match]:
    """The candidates of rule 2 in ``body``, in order."""
    found = []
    for match in _RESULT.finditer(body):
        eq = match.start()
        lo = max(0, eq - _LHS_WINDOW)
        boundary = max(body.rfind("=", lo, eq), body.rfind("\n", lo, eq), body.rfind(". ", lo, eq))
        lhs = body[max(lo, boundary + 1) : eq]
        if not (_DIGIT.search(lhs) and _OPERATOR.search(lhs)):
            continue
        if answer_value is not None and Decimal(match.group("num").replace(",", "")) == answer_value:
            continue
        found.append(match)
    return found


def perturb_number(text: str, rng) -> str:
    """A different number of the same shape as ``text`` (sign, decimals, thousands separators kept)."""
    negative = text.startswith("-")
    digits = text.lstrip("-")
    commas = "," in digits
    int_part, _, frac = digits.replace(",", "").partition(".")
    places = len(frac)
    units = int(int_part + frac)  # the value in units of the last decimal place
    scale = 10 ** max(0, len(str(units)) - 2)
    delta = rng.randint(1, 9) * scale
    new = units - delta if (units - delta >= 0 and rng.random() < 0.5) else units + delta
    s = str(new).rjust(places + 1, "0")
    new_int, new_frac = (s[:-places], s[-places:]) if places else (s, "")
    if commas:
        new_int = f"{int(new_int):,}"
    out = new_int + (f".{new_frac}" if places else "")
    return ("-" if negative and new != 0 else "") + out


def corrupt_response(response: str, rng) -> tuple[str, str] | str:
    """(rejected response, description) or a skip reason (`malformed_answer`, `no_intermediate_calculation`)."""
    split = split_final_answer(response)
    if split is None:
        return "malformed_answer"
    body, answer = split
    answer_value = parse_number(answer)
    candidates = intermediate_results(body, answer_value)
    if not candidates:
        return "no_intermediate_calculation"
    match = candidates[rng.randrange(len(candidates))]
    old = match.group("num")
    for _ in range(10):
        new = perturb_number(old, rng)
        value = parse_number(new)
        if new != old and value != parse_number(old) and value != answer_value:
            break
    else:  # pragma: no cover - ten draws from at least nine distinct values always find one
        return "no_intermediate_calculation"
    start, end = match.span("num")
    return response[:start] + new + response[end:], f"{old} -> {new}"


def build_metamath_pairs(
    rows: Iterable[dict[str, Any]], seed: int = 0, few_shot: int = 0, progress: bool = False
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Pairs from MetaMathQA-schema rows (`query`, `response`, optional `type`, `original_question`).

    prompt = the query (after ``few_shot`` solved examples from the same rows when > 0), chosen = the
    response, rejected = the response with one intermediate result corrupted (see the module docstring).
    Returns (pairs in source order, skip counts by reason). Deterministic for ``seed``."""
    from tqdm.auto import tqdm

    rows = rows if isinstance(rows, Sequence) else list(rows)
    counts: Counter = Counter()
    valid: list[tuple[int, str, str, str]] = []  # (row index, query, response, leak-group key)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            counts["not_a_record"] += 1
            continue
        query = text_field(row, "query", counts)
        if query is None:
            continue
        response = text_field(row, "response", counts)
        if response is None:
            continue
        group = row.get("original_question")
        valid.append((index, query, response, group if isinstance(group, str) and group.strip() else query))

    pairs: list[dict[str, str]] = []
    for pos, (index, query, response, group) in enumerate(
        tqdm(valid, desc="metamath pairs", unit="row", disable=not progress, mininterval=1.0)
    ):
        result = corrupt_response(response, row_rng(seed, index, SALT_CORRUPT))
        if isinstance(result, str):
            counts[result] += 1
            continue
        prompt = query
        if few_shot:
            shots = pick_few_shot(
                len(valid), few_shot, seed, index, lambda i: i == pos or valid[i][3] == group
            )
            prompt = few_shot_prompt([valid[i][1:3] for i in shots], query, qa_example, qa_query)
        pairs.append({"prompt": prompt, "chosen": response, "rejected": result[0]})
    return pairs, sorted_counts(counts)
