"""Preference-row checks that run before any model is loaded.

axolotl 0.19 fills a field that a JSON row lacks with null and formats it into the text, so a row without
`rejected` would train on the string "None". Each dataset's own `type:` transform runs on every raw row with
null/empty fields removed, so the transform itself says which field it needs."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_REPORTED_ROWS = 10


class PreferenceDataError(ValueError):
    """Preference data that cannot be trained on as it is; the message names the dataset, row and field."""


@dataclass
class DatasetReport:
    source: str
    rows: int = 0
    identical: int = 0
    problems: list[str] = field(default_factory=list)
    num_problems: int = 0


def _present(value) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (list, tuple, dict)):
        return len(value) > 0
    return value is not None


def check_rows(rows: Iterable[dict], transform, source: str, type_name: str, tokenizer=None) -> DatasetReport:
    """Apply ``transform`` (an axolotl DPO prompt-strategy function) to each row and report problems."""
    report = DatasetReport(source=source)
    kwargs = {"tokenizer": tokenizer} if "tokenizer" in inspect.signature(transform).parameters else {}
    for index, row in enumerate(rows):
        report.rows += 1
        problem = None
        try:
            out = transform({k: v for k, v in row.items() if _present(v)}, **kwargs)
        except KeyError as err:
            problem = f"lacks field {err.args[0]!r} (missing, null or empty), which type {type_name!r} needs"
        except (IndexError, TypeError, AttributeError, ValueError) as err:
            problem = f"has a malformed field for type {type_name!r}: {type(err).__name__}: {err}"
        else:
            empty = [k for k in ("prompt", "chosen", "rejected") if not _present(out.get(k))]
            if empty:
                problem = f"gives an empty {'/'.join(empty)} after type {type_name!r}"
            report.identical += not empty and out["chosen"] == out["rejected"]
        if problem:
            report.num_problems += 1
            if len(report.problems) < MAX_REPORTED_ROWS:
                report.problems.append(f"row {index} {problem}")
    return report


def raise_for_problems(reports: list[DatasetReport]) -> None:
    bad = [r for r in reports if r.num_problems]
    if not bad:
        return
    lines = ["preference data has rows that cannot be trained on (nothing was loaded or trained):"]
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


def check_configured_datasets(cfg) -> dict[str, int]:
    """Check every row of the config's `datasets` and `test_datasets` with their `type:`s; rows per split."""
    from axolotl.loaders import load_tokenizer
    from axolotl.prompt_strategies.dpo import load as load_dpo
    from axolotl.utils.data.shared import datasets_with_name_generator, load_dataset_with_config
    from axolotl.utils.logging import get_logger
    from datasets import DatasetDict

    reports, rows, tokenizer = [], {"train": 0, "eval": 0}, load_tokenizer(cfg)
    for key, split in (("datasets", "train"), ("test_datasets", "eval")):
        for index, ds_cfg in enumerate(cfg.get(key) or []):
            type_name = "user_defined.default" if isinstance(ds_cfg.get("type"), dict) else ds_cfg.get("type")
            transform = load_dpo(type_name, cfg, dataset_idx=index) if type_name else (lambda row: row)
            if transform is None:
                raise PreferenceDataError(
                    f"{key}[{index}] ({ds_cfg.get('path')}): unknown DPO dataset type {type_name!r}."
                )
            transform = transform[0] if isinstance(transform, tuple) else transform
            for expanded in datasets_with_name_generator([ds_cfg]):
                dataset = load_dataset_with_config(expanded, cfg.hf_use_auth_token, streaming=False)
                if isinstance(dataset, DatasetDict):
                    dataset = dataset[expanded.get("split") or "train"]
                source = f"{key}[{index}] {expanded.get('path')}"
                if expanded.get("data_files"):
                    source += f" (data_files={expanded.get('data_files')})"
                report = check_rows(dataset, transform, source, str(type_name), tokenizer)
                if report.identical:
                    get_logger(__name__).warning(
                        f"{source}: {report.identical} of {report.rows} rows have identical chosen and rejected "
                        "texts; they will be dropped."
                    )
                rows[split] += report.rows
                reports.append(report)
    raise_for_problems(reports)
    return rows
