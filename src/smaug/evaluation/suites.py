"""What `smaug eval` runs and reports: the suites of eval/suites.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smaug.common.errors import UserError, validation_error
from smaug.common.paths import EVAL_CONFIG_DIR

SUITES_FILE = EVAL_CONFIG_DIR / "suites.yaml"
TASKS_DIR = EVAL_CONFIG_DIR / "tasks"  # our lm-eval task configs (the offline mini tasks)
Text = Annotated[str, Field(min_length=1, pattern=r"\S")]
_STRICT = ConfigDict(extra="forbid", strict=True)


class Dataset(BaseModel):
    """What a number is reported against (a card's model-index `dataset`); type/config/split is its identity."""

    model_config = _STRICT
    name: Text
    type: Text
    config: Text | None
    split: Text | None


class TaskSpec(BaseModel):
    model_config = _STRICT
    key: str = ""  # the summary/card column ("arc"): its key in the suite
    label: str = ""  # display name ("ARC")
    task: Text  # lm-eval task or group name
    metric: Text
    filter: Text | None = None
    num_fewshot: Annotated[int, Field(ge=0)]
    aggregation: Literal["task", "unweighted_mean_of_subtasks"] = "task"
    dataset: Dataset
    overrides: dict[str, Any] = {}

    @field_validator("overrides")
    @classmethod
    def _not_task_or_shots(cls, overrides: dict) -> dict:
        if {"task", "num_fewshot"} & set(overrides):
            raise ValueError("overrides take lm-eval config keys other than task and num_fewshot")
        return overrides

    @property
    def result_key(self) -> str:
        """The key of this metric in lm-eval's results, e.g. `exact_match,strict-match`."""
        return f"{self.metric},{self.filter or 'none'}"

    @property
    def stderr_key(self) -> str:
        return f"{self.metric}_stderr,{self.filter or 'none'}"

    def harness_config(self) -> dict[str, Any]:
        """The task as lm-eval takes it (a fresh dict each call: lm-eval pops keys from it)."""
        return {"task": self.task, "num_fewshot": self.num_fewshot, **self.overrides}


class Suite(BaseModel):
    model_config = _STRICT
    name: str = ""
    description: str = ""
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    single_task_suites: bool = False
    # Its full (no --limit) results go into a model card's `model-index`, where the Hub and leaderboards read
    # them as comparable numbers; smoke suites stay in the card's body table.
    model_index: bool = False

    def task(self, key: str) -> TaskSpec:
        return self.tasks[key]


class SuitesFile(BaseModel):
    model_config = _STRICT
    labels: dict[str, str] = {}
    suites: dict[str, Suite] = Field(min_length=1)


def _check_identities(path: Path, suites: dict[str, Suite]) -> None:
    """Distinct datasets must never share a type/config/split: huggingface_hub would file one's score under the
    other's name. Within a suite for every suite; across suites for the model-index ones (they meet in one
    card's metadata)."""

    def clash(where: str, first: tuple[str, TaskSpec], second: tuple[str, TaskSpec], identity: tuple) -> UserError:
        tasks = f"tasks {first[0]}.{first[1].key} and {second[0]}.{second[1].key}"
        return UserError(
            f"{path}: {where}: {tasks} share the dataset identity type/config/split {'/'.join(map(str, identity))} "
            "but not its name and few-shot count, or report the same metric; give each its own type, config or split"
        )

    shared: dict[tuple, tuple[str, TaskSpec]] = {}
    for suite in suites.values():
        own: dict[tuple, TaskSpec] = {}
        for spec in suite.tasks.values():
            identity = (spec.dataset.type, spec.dataset.config, spec.dataset.split)
            first = own.setdefault(identity, spec)
            if first is not spec and (first.dataset.name != spec.dataset.name or first.metric == spec.metric):
                raise clash(f"suites.{suite.name}", (suite.name, first), (suite.name, spec), identity)
            first_in = shared.setdefault(identity, (suite.name, spec)) if suite.model_index else (suite.name, spec)
            if (first_in[1].dataset.name, first_in[1].num_fewshot) != (spec.dataset.name, spec.num_fewshot):
                raise clash("suites", first_in, (suite.name, spec), identity)


def load_suites(path: Path = SUITES_FILE) -> dict[str, Suite]:
    """All suites by name, and a single-task suite for each task of a `single_task_suites: true` suite."""
    try:
        parsed = SuitesFile.model_validate(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the suite definitions: {err}") from err
    except ValidationError as err:
        raise validation_error(err, str(path)) from None
    singles: dict[str, Suite] = {}
    for name, suite in parsed.suites.items():
        suite.name = name
        for key, spec in suite.tasks.items():
            spec.key, spec.label = key, spec.label or parsed.labels.get(key, key)
        for spec in suite.tasks.values() if suite.single_task_suites else []:
            single = Suite(name=spec.key, description=f"{spec.label} alone, as in {name}", tasks={spec.key: spec})
            singles[spec.key] = single.model_copy(update={"model_index": suite.model_index})
    if set(singles) & set(parsed.suites):
        raise UserError(f"{path}: suites: {sorted(set(singles) & set(parsed.suites))} clash with single-task suites")
    _check_identities(path, parsed.suites)
    return {**parsed.suites, **singles}


def get_suite(name: str, path: Path = SUITES_FILE) -> Suite:
    suites = load_suites(path)
    if name not in suites:
        raise UserError(f"unknown suite {name!r}; known suites: {', '.join(suites)} (defined in {path})")
    return suites[name]


PAPER_FILE = EVAL_CONFIG_DIR / "paper_results.yaml"
# The scores a paper result of each kind can name: mtbench.json's turn means, contamination.json's benchmarks.
PAPER_KEYS = {"mtbench": {"turn1", "turn2", "overall"}}
PAPER_KEYS["contamination"] = {"arc", "hellaswag", "mmlu", "truthfulqa", "winogrande", "gsm8k"}


class PaperResult(BaseModel):
    model_config = _STRICT
    what: Text
    kind: Literal["summary", "mtbench", "contamination"]  # compared with summary.json, mtbench.json, contamination.json
    suite: Text | None = None  # for kind summary
    where: Text  # the paper's table or section
    source: Text  # where the numbers were read
    note: Text | None = None  # what is inferred rather than read
    scores: dict[str, float] = Field(min_length=1)  # summary: x100, as the paper prints them
    std: dict[str, float] = {}


class PaperFile(BaseModel):
    model_config = _STRICT
    paper: Text
    results: dict[str, PaperResult] = Field(min_length=1)


def load_paper_results(path: Path = PAPER_FILE) -> dict[str, PaperResult]:
    try:
        parsed = PaperFile.model_validate(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the paper's results: {err}") from err
    except ValidationError as err:
        raise validation_error(err, str(path)) from None
    for name, entry in parsed.results.items():
        where = f"{path}: results.{name}"
        if (entry.kind == "summary") != (entry.suite is not None):
            raise UserError(f"{where}: `suite` is needed for kind summary, and only for it")
        known = set(get_suite(entry.suite).tasks) | {"average"} if entry.suite else PAPER_KEYS[entry.kind]
        unknown = sorted((set(entry.scores) | set(entry.std)) - known)
        if unknown:
            raise UserError(f"{where}: {unknown} are not among the scores compared ({', '.join(sorted(known))})")
    return parsed.results
