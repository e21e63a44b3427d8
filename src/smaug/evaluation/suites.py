"""Suites: what `smaug eval` runs and reports, read from eval/suites.yaml (the one home for it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smaug.common.errors import UserError
from smaug.common.paths import EVAL_CONFIG_DIR

SUITES_FILE = EVAL_CONFIG_DIR / "suites.yaml"
# Our lm-eval task configs (the offline mini tasks); handed to lm-eval's TaskManager as include_path.
TASKS_DIR = EVAL_CONFIG_DIR / "tasks"

AGGREGATIONS = ("task", "unweighted_mean_of_subtasks")
DATASET_FIELDS = ("name", "type", "config", "split")


@dataclass(frozen=True)
class TaskSpec:
    key: str  # short name: summary/card column ("arc")
    label: str  # display name ("ARC")
    task: str  # lm-eval task or group name
    metric: str
    filter: str | None
    num_fewshot: int
    aggregation: str
    dataset: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def result_key(self) -> str:
        """The key of this metric in lm-eval's results dict, e.g. `exact_match,strict-match`."""
        return f"{self.metric},{self.filter or 'none'}"

    @property
    def stderr_key(self) -> str:
        return f"{self.metric}_stderr,{self.filter or 'none'}"

    def harness_config(self) -> dict[str, Any]:
        """The task as lm-eval takes it: a registered name plus per-task overrides (a fresh dict each call:
        lm-eval pops keys from it)."""
        return {"task": self.task, "num_fewshot": self.num_fewshot, **self.overrides}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple[TaskSpec, ...]

    def task(self, key: str) -> TaskSpec:
        return next(spec for spec in self.tasks if spec.key == key)


def _fail(path: Path, where: str, what: str) -> UserError:
    return UserError(f"{path}: {where}: {what}")


def _task_spec(path: Path, suite: str, key: str, raw: Any, labels: dict[str, str]) -> TaskSpec:
    where = f"suites.{suite}.tasks.{key}"
    if not isinstance(raw, dict):
        raise _fail(path, where, "must be a mapping with task, metric, num_fewshot and dataset")
    missing = [name for name in ("task", "metric", "num_fewshot", "dataset") if name not in raw]
    if missing:
        raise _fail(path, where, f"missing {', '.join(missing)}")
    unknown = set(raw) - {"task", "label", "metric", "filter", "num_fewshot", "aggregation", "dataset", "overrides"}
    if unknown:
        raise _fail(path, where, f"unknown field(s) {', '.join(sorted(unknown))}")
    if not isinstance(raw["num_fewshot"], int) or raw["num_fewshot"] < 0:
        raise _fail(path, f"{where}.num_fewshot", "must be an integer >= 0")
    aggregation = raw.get("aggregation", "task")
    if aggregation not in AGGREGATIONS:
        raise _fail(path, f"{where}.aggregation", f"{aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
    dataset = raw["dataset"]
    if not isinstance(dataset, dict) or set(dataset) != set(DATASET_FIELDS):
        raise _fail(path, f"{where}.dataset", f"needs exactly the fields {', '.join(DATASET_FIELDS)}")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict) or {"task", "num_fewshot"} & set(overrides):
        raise _fail(path, f"{where}.overrides", "must be a mapping of lm-eval config keys other than task/num_fewshot")
    return TaskSpec(
        key=key,
        label=str(raw.get("label") or labels.get(key, key)),
        task=str(raw["task"]),
        metric=str(raw["metric"]),
        filter=raw.get("filter") or None,
        num_fewshot=raw["num_fewshot"],
        aggregation=aggregation,
        dataset=dict(dataset),
        overrides=dict(overrides),
    )


def load_suites(path: Path = SUITES_FILE) -> dict[str, Suite]:
    """All suites by name, including one single-task suite per task of a `single_task_suites: true` suite."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the suite definitions: {err}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("suites"), dict) or not raw["suites"]:
        raise _fail(path, "suites", "missing or empty: define at least one suite")
    labels = raw.get("labels") or {}
    suites: dict[str, Suite] = {}
    singles: dict[str, Suite] = {}
    for name, body in raw["suites"].items():
        if not isinstance(body, dict) or not isinstance(body.get("tasks"), dict) or not body["tasks"]:
            raise _fail(path, f"suites.{name}.tasks", "missing or empty: list the suite's tasks")
        specs = tuple(_task_spec(path, name, key, spec, labels) for key, spec in body["tasks"].items())
        suites[name] = Suite(name, str(body.get("description", "")).strip(), specs)
        if body.get("single_task_suites"):
            for spec in specs:
                singles[spec.key] = Suite(spec.key, f"{spec.label} alone, as in {name}", (spec,))
    clash = set(singles) & set(suites)
    if clash:
        raise _fail(path, "suites", f"suite name(s) {', '.join(sorted(clash))} clash with single-task suites")
    return {**suites, **singles}


def get_suite(name: str, path: Path = SUITES_FILE) -> Suite:
    suites = load_suites(path)
    if name not in suites:
        raise UserError(f"unknown suite {name!r}; known suites: {', '.join(suites)} (defined in {path})")
    return suites[name]
