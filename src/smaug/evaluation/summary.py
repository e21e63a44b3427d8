"""From lm-eval's raw results to summary.json / summary.md, and side-by-side comparison tables.

summary.json is the contract with the model-card code (`load_summary` checks every field the cards rely on);
values are fractions in [0, 1] as lm-eval reports them, the Markdown tables show them x100 as the leaderboard did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_text
from smaug.common.errors import UserError
from smaug.common.paths import eval_dir
from smaug.evaluation.suites import Suite, TaskSpec

SUMMARY_SCHEMA = 1


def leaf_tasks(group_subtasks: dict[str, list[str]], name: str) -> list[str]:
    """The leaf tasks under `name`, following nested groups (mmlu -> mmlu_stem -> mmlu_abstract_algebra)."""
    children = group_subtasks.get(name) or []
    if not children:
        return [name]
    leaves: list[str] = []
    for child in children:
        leaves.extend(leaf_tasks(group_subtasks, child))
    return leaves


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for stderrs it could not compute."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def unweighted_subtask_mean(harness: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """Plain mean of `spec.metric` over the leaf tasks of group `spec.task` (the v1 leaderboard's MMLU:
    every subject counts once, whatever its size). Its stderr treats the subjects as independent."""
    results = harness["results"]
    leaves = leaf_tasks(harness.get("group_subtasks", {}), spec.task)
    if leaves == [spec.task]:
        raise UserError(
            f"{spec.task!r} has no subtasks in the harness results, so "
            f"'aggregation: unweighted_mean_of_subtasks' for {spec.key!r} in eval/suites.yaml cannot apply"
        )
    values, stderrs = {}, []
    for leaf in leaves:
        if spec.result_key not in results.get(leaf, {}):
            raise UserError(f"subtask {leaf!r} of {spec.task!r} has no {spec.result_key!r} result")
        values[leaf] = float(results[leaf][spec.result_key])
        stderrs.append(_number(results[leaf].get(spec.stderr_key)))
    mean = sum(values.values()) / len(values)
    stderr = None if None in stderrs else math.sqrt(sum(se**2 for se in stderrs)) / len(stderrs)
    return {"value": mean, "stderr": stderr, "subtasks": values}


def task_result(harness: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """One summary entry: the reported number for `spec` plus what it was measured on."""
    entry: dict[str, Any] = {"task": spec.task, "metric": spec.metric}
    if spec.aggregation == "unweighted_mean_of_subtasks":
        agg = unweighted_subtask_mean(harness, spec)
        entry.update(value=agg["value"], stderr=agg["stderr"])
        group_value = harness["results"].get(spec.task, {}).get(spec.result_key)
        entry["harness_group_value"] = _number(group_value)  # lm-eval's size-weighted number, for reference
        entry["subtasks"] = agg["subtasks"]
    else:
        row = harness["results"].get(spec.task)
        if row is None or spec.result_key not in row:
            have = sorted(k for k in (row or {}) if "," in k and "_stderr" not in k)
            raise UserError(
                f"the harness reported no {spec.result_key!r} for task {spec.task!r} "
                f"(it has: {', '.join(have) or 'nothing'}); "
                f"fix metric/filter of {spec.key!r} in eval/suites.yaml"
            )
        entry.update(value=float(row[spec.result_key]), stderr=_number(row.get(spec.stderr_key)))
    entry.update(
        num_fewshot=spec.num_fewshot,
        filter=spec.filter,
        aggregation=spec.aggregation,
        dataset=dict(spec.dataset),
        label=spec.label,
    )
    return entry


def build_summary(harness: dict[str, Any], suite: Suite, run_info: dict[str, Any]) -> dict[str, Any]:
    """summary.json's content. `run_info` holds model, model_revision, dtype, batch_size, versions, ..."""
    tasks = {spec.key: task_result(harness, spec) for spec in suite.tasks}
    average = sum(entry["value"] for entry in tasks.values()) / len(tasks)
    return {"schema": SUMMARY_SCHEMA, **run_info, "suite": suite.name, "tasks": tasks, "average": average}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def render_summary_md(summary: dict[str, Any]) -> str:
    lines = [
        f"# {summary['model']} — {summary['suite']}",
        "",
        f"- revision: `{summary.get('model_revision')}`",
        f"- dtype: {summary.get('dtype')}, batch size: {summary.get('batch_size')}, device: {summary.get('device')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items()),
    ]
    if summary.get("limit") is not None:
        lines.append(f"- **limit {summary['limit']} documents per task: not comparable with leaderboard numbers**")
    lines += ["", "| Task | Metric | Shots | Score | ± stderr |", "|---|---|---:|---:|---:|"]
    for entry in summary["tasks"].values():
        metric = entry["metric"] + (f" ({entry['filter']})" if entry.get("filter") else "")
        if entry.get("aggregation") == "unweighted_mean_of_subtasks":
            metric += f", unweighted mean of {len(entry.get('subtasks', {}))} subtasks"
        lines.append(
            f"| {entry.get('label', entry['task'])} (`{entry['task']}`) | {metric} | {entry['num_fewshot']} "
            f"| {_pct(entry['value'])} | {_pct(entry.get('stderr'))} |"
        )
    lines.append(f"| **Average** | | | **{_pct(summary['average'])}** | |")
    return "\n".join(lines) + "\n"


def compare_table(summaries: Iterable[dict[str, Any]]) -> str:
    """Paper Table 1 style: one row per model, Average then one column per task (scores x100)."""
    summaries = list(summaries)
    if not summaries:
        raise UserError("nothing to compare: give at least one summary.json, eval folder or model")
    suites = sorted({s["suite"] for s in summaries})
    if len(suites) > 1:
        raise UserError(
            f"these summaries come from different suites ({', '.join(suites)}); compare one suite at a time"
        )
    columns: dict[str, str] = {}
    for summary in summaries:
        for key, entry in summary["tasks"].items():
            columns.setdefault(key, entry.get("label", key))
    lines = ["| Model | Average | " + " | ".join(columns.values()) + " |", "|---|---:|" + "---:|" * len(columns)]
    limited = False
    for summary in summaries:
        name = str(summary["model"])
        if summary.get("limit") is not None:
            name, limited = name + " *", True
        cells = [_pct(summary["tasks"][key]["value"]) if key in summary["tasks"] else "—" for key in columns]
        lines.append(f"| {name} | {_pct(summary['average'])} | " + " | ".join(cells) + " |")
    if limited:
        lines += ["", "\\* evaluated with `--limit` (a subset of each task): not comparable with full runs."]
    return "\n".join(lines) + "\n"


def to_jsonable(obj: Any) -> Any:
    """lm-eval's results hold numpy numbers, sets and functions (in task configs): make them JSON."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def write_results(out_dir: Path, harness: dict[str, Any], summary: dict[str, Any]) -> None:
    """harness.json, summary.md, then summary.json last: its presence means the set is complete."""
    write_text(out_dir / "harness.json", json.dumps(to_jsonable(harness), indent=2) + "\n")
    write_text(out_dir / "summary.md", render_summary_md(summary))
    write_text(out_dir / "summary.json", json.dumps(to_jsonable(summary), indent=2) + "\n")


def find_summaries(model: str | Path, results_root: Path | None = None) -> list[Path]:
    """The summary.json of every suite `smaug eval run` wrote for ``model``."""
    model_root = eval_dir(str(model), "_", root=results_root).parent
    return sorted(model_root.glob("*/summary.json"))


def _problem(task: dict[str, Any], field_name: str, kinds: tuple[type, ...], required: bool) -> str | None:
    value = task.get(field_name)
    if value is None:
        return "is missing" if required else None
    if isinstance(value, bool) or not isinstance(value, kinds):
        return f"is {value!r}, expected {' or '.join(k.__name__ for k in kinds)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"is {value!r}, expected a finite number"
    if isinstance(value, str) and not value.strip():
        return "is empty"
    return None


# summary.json fields the cards and tables read: (field, types, required)
_SUMMARY_FIELDS = (
    ("model", (str,), True),
    ("suite", (str,), True),
    ("average", (int, float), True),
    ("limit", (int, float), False),
    ("dtype", (str,), False),
    ("versions", (dict,), False),
)
_TASK_FIELDS = (
    ("metric", (str,), True),
    ("value", (int, float), True),
    ("dataset", (dict,), True),
    ("stderr", (int, float), False),
    ("num_fewshot", (int,), False),
    ("filter", (str,), False),
    ("label", (str,), False),
    ("task", (str,), False),
)
_DATASET_FIELDS = (("name", (str,), True), ("type", (str,), True), ("config", (str,), False), ("split", (str,), False))


def load_summary(path: str | Path) -> dict[str, Any]:
    """A summary.json written by `smaug eval run`, checked field by field (``_path`` added: where it was read)."""
    path = Path(path)
    hint = "pass a summary.json written by `smaug eval run`"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err}); {hint}") from err
    if not data.strip():
        raise UserError(f"{path}: the file is empty; {hint}")
    try:
        summary = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); {hint}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); {hint}") from err
    except RecursionError as err:
        raise UserError(f"{path}: JSON nested too deeply to be a summary; {hint}") from err
    if not isinstance(summary, dict):
        raise UserError(f"{path}: a JSON {type(summary).__name__}, not an object; {hint}")
    missing = [k for k in ("model", "suite", "tasks", "average") if k not in summary]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}: not a `smaug eval` summary.json")
    for name, kinds, required in _SUMMARY_FIELDS:
        problem = _problem(summary, name, kinds, required)
        if problem:
            raise UserError(f"{path}: field `{name}` {problem}; {hint}")
    if not isinstance(summary["tasks"], dict) or not summary["tasks"]:
        raise UserError(
            f"{path}: field `tasks` is empty or not a mapping; pass a summary.json written by `smaug eval`."
        )
    for key, task in summary["tasks"].items():
        if not isinstance(task, dict):
            raise UserError(f"{path}: tasks.{key} is not an object; {hint}")
        for name, kinds, required in _TASK_FIELDS:
            problem = _problem(task, name, kinds, required)
            if problem:
                raise UserError(f"{path}: tasks.{key}.{name} {problem}.")
        value = task["value"]
        if not 0.0 <= value <= 1.0:
            raise UserError(
                f"{path}: tasks.{key}.value is {value!r}; expected a fraction in [0, 1] as lm-eval reports."
            )
        for name, kinds, required in _DATASET_FIELDS:
            problem = _problem(task["dataset"], name, kinds, required)
            if problem:
                raise UserError(f"{path}: tasks.{key}.dataset.{name} {problem}.")
    summary["_path"] = str(path)
    return summary
