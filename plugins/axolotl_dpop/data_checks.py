"""Preference-data checks that run before any model is loaded.

axolotl 0.19 fills a field that a JSON row lacks with null and then formats it into the text, so a row
without `rejected` silently trains on the string "None". We run each dataset's own `type:` transform
on every raw row, with null/empty fields removed, so the transform itself tells us which field it
needs; and we count pairs whose chosen and rejected texts come out identical (they carry no preference
signal and make DPO/DPOP's log-ratio difference exactly zero).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_REPORTED_ROWS = 10


class PreferenceDataError(ValueError):
    """A preference dataset cannot be trained on as it is; the message names the dataset, row and field."""


@dataclass
class DatasetReport:
    source: str
    rows: int = 0
    identical: int = 0
    problems: list[str] = field(default_factory=list)
    num_problems: int = 0


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return True


def check_rows(rows: Iterable[dict], transform, source: str, type_name: str, tokenizer=None) -> DatasetReport:
    """Apply ``transform`` (an axolotl DPO prompt-strategy function) to each row and report problems."""
    report = DatasetReport(source=source)
    wants_tokenizer = "tokenizer" in inspect.signature(transform).parameters
    for index, row in enumerate(rows):
        report.rows += 1
        present = {k: v for k, v in row.items() if _present(v)}
        problem = None
        try:
            out = transform(dict(present), tokenizer=tokenizer) if wants_tokenizer else transform(dict(present))
        except KeyError as err:
            problem = f"lacks field {err.args[0]!r} (missing, null or empty), which type {type_name!r} needs"
        except (IndexError, TypeError, AttributeError, ValueError) as err:
            problem = f"has a malformed field for type {type_name!r}: {type(err).__name__}: {err}"
        else:
            empty = [k for k in ("prompt", "chosen", "rejected") if not _present(out.get(k))]
            if empty:
                problem = f"gives an empty {'/'.join(empty)} after type {type_name!r}"
            elif out["chosen"] == out["rejected"]:
                report.identical += 1
        if problem:
            report.num_problems += 1
            if len(report.problems) < MAX_REPORTED_ROWS:
                report.problems.append(f"row {index} {problem}")
    return report


def raise_for_problems(reports: list[DatasetReport]) -> None:
    bad = [r for r in reports if r.num_problems]
    if not bad:
        return
    lines = ["rl: dpop: preference data has rows that cannot be trained on (nothing was loaded or trained):"]
    for report in bad:
        lines.append(f"  {report.source}: {report.num_problems} of {report.rows} rows")
        lines.extend(f"    - {p}" for p in report.problems)
        if report.num_problems > len(report.problems):
            lines.append(f"    - ... and {report.num_problems - len(report.problems)} more")
    lines.append(
        "Fix or remove these rows, or pick the dataset `type:` whose fields match the data "
        "(e.g. chatml.prompt_pairs: prompt/chosen/rejected; chatml.intel: question/chosen/rejected)."
    )
    raise PreferenceDataError("\n".join(lines))
