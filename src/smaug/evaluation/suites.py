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
    # Whether its full (no --limit) results go into a model card's `model-index` metadata, where the Hub and
    # leaderboards read them as comparable numbers. Smoke suites stay in the card's body table.
    model_index: bool = False

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
    for name in DATASET_FIELDS:
        value = dataset[name]
        if not (isinstance(value, str) and value.strip()) and not (value is None and name in ("config", "split")):
            raise _fail(
                path,
                f"{where}.dataset.{name}",
                "must be non-empty text" + (" or null" if name in ("config", "split") else ""),
            )
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


def _identity(spec: TaskSpec) -> tuple:
    """What huggingface_hub groups a card's eval results by (`EvalResult.unique_identifier`, less the task type
    and revision, which are the same for all of ours): results sharing it end up under one dataset."""
    return (spec.dataset["type"], spec.dataset.get("config"), spec.dataset.get("split"))


def _check_identities(path: Path, suites: dict[str, Suite]) -> None:
    """Distinct datasets must never share a (type, config, split): a model card would file one's score under
    the other's name. Within a suite that holds for every suite; across suites, for the model-index ones (their
    results meet in one card's metadata)."""

    def clash(where: str, a: tuple[str, TaskSpec], b: tuple[str, TaskSpec], why: str) -> UserError:
        ident = "/".join(str(part) for part in _identity(a[1]))
        return _fail(
            path,
            where,
            f"tasks {a[0]}.{a[1].key} and {b[0]}.{b[1].key} share the dataset identity "
            f"type/config/split {ident} but {why}; give each dataset its own type, config or "
            "split (huggingface_hub files results with the same identity under one dataset)",
        )

    shared: dict[tuple, tuple[str, TaskSpec]] = {}
    for suite in suites.values():
        own: dict[tuple, tuple[str, TaskSpec]] = {}
        for spec in suite.tasks:
            first = own.setdefault(_identity(spec), (suite.name, spec))
            if first[1] is not spec:
                if first[1].dataset["name"] != spec.dataset["name"]:
                    raise clash(f"suites.{suite.name}", first, (suite.name, spec), "have different names")
                if first[1].metric == spec.metric:
                    raise clash(
                        f"suites.{suite.name}", first, (suite.name, spec), f"report the same metric {spec.metric}"
                    )
            if not suite.model_index:
                continue
            first = shared.setdefault(_identity(spec), (suite.name, spec))
            if (first[1].dataset["name"], first[1].num_fewshot) != (spec.dataset["name"], spec.num_fewshot):
                raise clash("suites", first, (suite.name, spec), "differ in name or few-shot count")


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
        unknown = set(body) - {"description", "tasks", "single_task_suites", "model_index"}
        if unknown:
            raise _fail(path, f"suites.{name}", f"unknown field(s) {', '.join(sorted(unknown))}")
        model_index = body.get("model_index", False)
        if not isinstance(model_index, bool):
            raise _fail(path, f"suites.{name}.model_index", "must be true or false")
        specs = tuple(_task_spec(path, name, key, spec, labels) for key, spec in body["tasks"].items())
        suites[name] = Suite(name, str(body.get("description", "")).strip(), specs, model_index)
        if body.get("single_task_suites"):
            for spec in specs:
                singles[spec.key] = Suite(spec.key, f"{spec.label} alone, as in {name}", (spec,), model_index)
    clash = set(singles) & set(suites)
    if clash:
        raise _fail(path, "suites", f"suite name(s) {', '.join(sorted(clash))} clash with single-task suites")
    _check_identities(path, suites)
    return {**suites, **singles}


def get_suite(name: str, path: Path = SUITES_FILE) -> Suite:
    suites = load_suites(path)
    if name not in suites:
        raise UserError(f"unknown suite {name!r}; known suites: {', '.join(suites)} (defined in {path})")
    return suites[name]
