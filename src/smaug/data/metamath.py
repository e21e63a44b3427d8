"""MetaMath preference pairs: the correct response vs. the same response with ONE intermediate result wrong (paper
App. D: "$25 + $15.20 + $6.80 = $47" becomes "= $52", the answer untouched). The rule, step by step, and why every
row gets a pair (`fallback`): src/smaug/data/README.md."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from smaug.data.rows import (
    SALT_CORRUPT,
    qa_example,
    qa_query,
    row_rng,
    source_records,
    text_field,
    typed_field,
    with_few_shot,
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
    return Corruption(response[:start] + new + response[end:], kind)


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
    rows: Sequence[dict[str, Any]],
    seed: int = 0,
    few_shot: int = 0,
    progress: bool = False,
    fallback: bool = True,
    only: Collection[int] | None = None,
    report: dict | None = None,
) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Pairs from MetaMathQA-schema rows (`query`, `response`, optional `original_question`): prompt = the query
    (after ``few_shot`` solved examples), chosen = the response, rejected = it with one intermediate result
    corrupted (``fallback=False``: rows without one are skipped). ``only``: build from these row indices alone
    (the others are not built, counted nor used as examples). ``report`` receives the count of each corruption
    kind under `corrupted`. Returns (pairs in source order, skip counts by reason). A field of the wrong type
    raises `RowTypeError` naming the row."""
    counts: Counter = Counter()
    kinds: Counter = Counter()
    valid = []
    for index, row in source_records(rows, only, counts, progress, "metamath pairs"):
        query = text_field(row, "query", counts, index)
        response = query and text_field(row, "response", counts, index)
        if not response:
            continue
        typed_field(row, "original_question", index, (str,), "text")  # the leak group of the eval split
        result = corrupt_response(response, row_rng(seed, index, SALT_CORRUPT), fallback)
        if isinstance(result, str):
            counts[result] += 1
            continue
        kinds[result.kind] += 1
        pair = {"prompt": query, "chosen": response, "rejected": result.rejected}
        valid.append((index, query, response, metamath_group(row), [pair]))
    if report is not None:
        report["corrupted"] = {kind: kinds[kind] for kind in CORRUPTION_KINDS if kinds[kind]}
    return with_few_shot(valid, seed, few_shot, qa_example, qa_query), dict(sorted(counts.items()))
