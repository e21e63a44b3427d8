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
4. A row with no candidate (a one-step solution, or one whose results are not plain numbers after `=`) still
   gets a pair, as every MetaMathQA row does in the released set (393,999 + 1,000 pairs from 395,000 rows; see
   README.md). The candidates are then, in this order: the results of the *final* calculation in the body
   (`3 * 4 = 12` whose 12 is the answer; the `The answer is:` line is still untouched); the numbers on the
   right of any `=` (`= \\frac{3}{4}`, `x = 5`); any number in the body before the `####` line. Only a
   body with no number at all is skipped (`no_number_in_body`).
   ``fallback=False`` is the strict rule: such rows are skipped as `no_intermediate_calculation`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from smaug.data.rows import (
    SALT_CORRUPT,
    few_shot_prompt,
    pick_few_shot,
    qa_example,
    qa_query,
    row_rng,
    sorted_counts,
    source_records,
    text_field,
    typed_field,
)

ANSWER_MARKER = "The answer is:"

_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_RESULT = re.compile(
    r"=[ \t]*(?:\\?\$[ \t]*)?"
    rf"(?P<num>{_NUMBER})"
    r"(?!\w|\.\d)"  # not 2x, not 5th, not 3.4.5
    r"(?![ \t]*(?:[-+*/×÷^·(]|\\times|\\cdot|\\div|x[ \t]*\$?\d))"  # not the start of a longer expression
)
# Any number standing on its own (the fallback of rule 4): not part of a word (5th, x2) or of a longer number.
_ANY_NUMBER = re.compile(rf"(?<![\w.,])(?P<num>{_NUMBER})(?!\w|\.\d|,\d)")
# The right-hand side of an `=`: up to the end of the formula, line, sentence or the next `=`.
_RHS = re.compile(r"=(?P<rhs>[^=\n$]*?)(?=\$|\n|\.\s|\.$|=|$)")
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


def calculation_results(body: str) -> list[re.Match]:
    """Numbers right after an `=` whose left-hand side is a calculation (rule 2 without the final-answer
    exclusion), in order."""
    found = []
    for match in _RESULT.finditer(body):
        eq = match.start()
        lo = max(0, eq - _LHS_WINDOW)
        boundary = max(body.rfind("=", lo, eq), body.rfind("\n", lo, eq), body.rfind(". ", lo, eq))
        lhs = body[max(lo, boundary + 1) : eq]
        if _DIGIT.search(lhs) and _OPERATOR.search(lhs):
            found.append(match)
    return found


def _is_answer(match: re.Match, answer_value: Decimal | None) -> bool:
    return answer_value is not None and Decimal(match.group("num").replace(",", "")) == answer_value


def intermediate_results(body: str, answer_value: Decimal | None) -> list[re.Match]:
    """The candidates of rule 2 in ``body``, in order."""
    return [m for m in calculation_results(body) if not _is_answer(m, answer_value)]


# What a rejected response changed, in the order rule 4 tries them.
CORRUPTION_KINDS = ("intermediate", "final_calculation", "result", "any_number")


def candidates(body: str, answer_value: Decimal | None, fallback: bool = True) -> tuple[str, list[re.Match]]:
    """(kind, candidates) for one response body: rule 2's intermediate results, else (with ``fallback``) the
    final calculation's results, the numbers right of an `=`, any number before the `####` line (rule 4);
    ("", []) when there is none."""
    results = calculation_results(body)
    found = [m for m in results if not _is_answer(m, answer_value)]
    if found or not fallback:
        return ("intermediate", found) if found else ("", [])
    if results:
        return "final_calculation", results
    hashes = body.find("####")
    end = hashes if hashes >= 0 else len(body)
    on_the_right = [
        n for rhs in _RHS.finditer(body, 0, end) for n in _ANY_NUMBER.finditer(body, rhs.start("rhs"), rhs.end("rhs"))
    ]
    if on_the_right:
        return "result", on_the_right
    numbers = list(_ANY_NUMBER.finditer(body, 0, end))
    return ("any_number", numbers) if numbers else ("", [])


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


class Corruption(NamedTuple):
    rejected: str
    description: str  # "47 -> 52"
    kind: str  # one of CORRUPTION_KINDS


def corrupt_response(response: str, rng, fallback: bool = True) -> Corruption | str:
    """The rejected response, or a skip reason (`malformed_answer`, `no_intermediate_calculation` without
    ``fallback``, `no_number_in_body` with it)."""
    split = split_final_answer(response)
    if split is None:
        return "malformed_answer"
    body, answer = split
    answer_value = parse_number(answer)
    kind, found = candidates(body, answer_value, fallback)
    if not found:
        return "no_number_in_body" if fallback else "no_intermediate_calculation"
    match = found[rng.randrange(len(found))]
    old = match.group("num")
    for _ in range(10):
        new = perturb_number(old, rng)
        value = parse_number(new)
        if new != old and value != parse_number(old) and value != answer_value:
            break
    else:  # pragma: no cover - ten draws from at least nine distinct values always find one
        return "no_intermediate_calculation"
    start, end = match.span("num")
    return Corruption(response[:start] + new + response[end:], f"{old} -> {new}", kind)


def metamath_group(row: Any) -> str | None:
    """The leak group of a row: rephrasings of one problem share `original_question`."""
    if not isinstance(row, dict):
        return None
    group = row.get("original_question")
    if isinstance(group, str) and group.strip():
        return group
    query = row.get("query")
    return query.strip() if isinstance(query, str) else None


def build_metamath_pairs(
    rows: Iterable[dict[str, Any]],
    seed: int = 0,
    few_shot: int = 0,
    progress: bool = False,
    fallback: bool = True,
    only: Collection[int] | None = None,
    report: dict | None = None,
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Pairs from MetaMathQA-schema rows (`query`, `response`, optional `type`, `original_question`).

    prompt = the query (after ``few_shot`` solved examples from the same rows when > 0), chosen = the
    response, rejected = the response with one intermediate result corrupted (see the module docstring;
    ``fallback=False``: rows without one are skipped). ``only``: build from these row indices alone (the
    others are neither built, counted nor used as few-shot examples; a row's corruption does not depend on
    it). ``report``, when given, receives the count of each corruption kind under `corrupted`.
    Returns (pairs in source order, skip counts by reason). Deterministic for ``seed``. A field of the wrong
    type (a number as `query`) raises `RowTypeError` naming the row."""
    from tqdm.auto import tqdm

    rows = rows if isinstance(rows, Sequence) else list(rows)
    counts: Counter = Counter()
    kinds: Counter = Counter()
    valid: list[tuple[int, str, str, str]] = []  # (row index, query, response, leak-group key)
    for index, row in source_records(rows, only, counts):
        query = text_field(row, "query", counts, index)
        if query is None:
            continue
        response = text_field(row, "response", counts, index)
        if response is None:
            continue
        typed_field(row, "original_question", index, (str,), "text")  # the leak group of the eval split
        valid.append((index, query, response, metamath_group(row)))

    pairs: list[dict[str, str]] = []
    for pos, (index, query, response, group) in enumerate(
        tqdm(valid, desc="metamath pairs", unit="row", disable=not progress, mininterval=1.0)
    ):
        result = corrupt_response(response, row_rng(seed, index, SALT_CORRUPT), fallback)
        if isinstance(result, str):
            counts[result] += 1
            continue
        kinds[result.kind] += 1
        prompt = query
        if few_shot:
            shots = pick_few_shot(len(valid), few_shot, seed, index, lambda i: i == pos or valid[i][3] == group)
            prompt = few_shot_prompt([valid[i][1:3] for i in shots], query, qa_example, qa_query)
        pairs.append({"prompt": prompt, "chosen": response, "rejected": result.rejected})
    if report is not None:
        report["corrupted"] = {kind: kinds[kind] for kind in CORRUPTION_KINDS if kinds[kind]}
    return pairs, sorted_counts(counts)
