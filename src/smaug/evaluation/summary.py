"""From lm-eval's raw results to summary.json / summary.md (values are fractions in [0, 1] as lm-eval reports
them; the Markdown tables show them x100 as the leaderboard did), and side-by-side comparison tables."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from axolotl_dpop.atomic import atomic_directory
from axolotl_dpop.provenance import utc_stamp
from smaug.common.errors import UserError, validation_error
from smaug.common.paths import eval_dir
from smaug.evaluation.suites import Dataset, Suite, TaskSpec

_CHECKED = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")


class TaskResult(BaseModel):
    model_config = _CHECKED
    task: str | None = None
    label: str | None = None
    metric: Annotated[str, Field(min_length=1)]
    filter: str | None = None
    value: Annotated[float, Field(ge=0, le=1)]  # a fraction, as lm-eval reports it
    stderr: float | None = None
    num_fewshot: int | None = None
    aggregation: str = "task"
    dataset: Dataset
    subtasks: dict[str, float] | None = None


class SampleLog(BaseModel):
    model_config = _CHECKED
    file: Annotated[str, Field(pattern=r"^samples_[^/\\]+\.jsonl$")]  # lm-eval's per-sample log, beside summary.json
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Summary(BaseModel):
    """summary.json: what model cards and comparison tables read."""

    model_config = _CHECKED
    model: Annotated[str, Field(min_length=1)]
    suite: Annotated[str, Field(min_length=1)]
    tasks: dict[str, TaskResult] = Field(min_length=1)
    average: float
    limit: int | float | None = None
    dtype: str | None = None
    versions: dict[str, str | None] = {}
    harness_sha256: str | None = None  # of harness.json beside it: the raw results it was computed from
    samples: dict[str, SampleLog] | None = None  # per lm-eval task


def leaf_tasks(group_subtasks: dict[str, list[str]], name: str) -> list[str]:
    """The leaf tasks under ``name``, through nested groups (mmlu -> mmlu_stem -> mmlu_abstract_algebra)."""
    children = group_subtasks.get(name) or []
    return [leaf for child in children for leaf in leaf_tasks(group_subtasks, child)] if children else [name]


def _number(value: Any) -> float | None:
    """lm-eval writes "N/A" for stderrs it could not compute."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def unweighted_subtask_mean(harness: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """Plain mean over the leaf tasks of group ``spec.task`` (the v1 leaderboard's MMLU: every subject counts
    once, whatever its size); the stderr treats the subjects as independent."""
    results = harness["results"]
    leaves = leaf_tasks(harness.get("group_subtasks", {}), spec.task)
    if leaves == [spec.task]:
        raise UserError(
            f"{spec.task!r} has no subtasks in the harness results, so "
            f"'aggregation: unweighted_mean_of_subtasks' for {spec.key!r} in eval/suites.yaml cannot apply"
        )
    missing = [leaf for leaf in leaves if spec.result_key not in results.get(leaf, {})]
    if missing:
        raise UserError(f"subtask {missing[0]!r} of {spec.task!r} has no {spec.result_key!r} result")
    values = {leaf: float(results[leaf][spec.result_key]) for leaf in leaves}
    stderrs = [_number(results[leaf].get(spec.stderr_key)) for leaf in leaves]
    stderr = None if None in stderrs else math.sqrt(sum(se**2 for se in stderrs)) / len(stderrs)
    return {"value": sum(values.values()) / len(values), "stderr": stderr, "subtasks": values}


def task_result(harness: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """One summary entry: the reported number for ``spec`` and what it was measured on."""
    row = harness["results"].get(spec.task) or {}
    entry = spec.model_dump(include={"task", "label", "metric", "filter", "num_fewshot", "aggregation", "dataset"})
    if spec.aggregation == "unweighted_mean_of_subtasks":  # with lm-eval's size-weighted number for reference
        return (
            entry | unweighted_subtask_mean(harness, spec) | {"harness_group_value": _number(row.get(spec.result_key))}
        )
    if spec.result_key not in row:
        have = ", ".join(sorted(k for k in row if "," in k and "_stderr" not in k)) or "nothing"
        raise UserError(
            f"the harness reported no {spec.result_key!r} for task {spec.task!r} (it has: {have}); "
            f"fix metric/filter of {spec.key!r} in eval/suites.yaml"
        )
    return entry | {"value": float(row[spec.result_key]), "stderr": _number(row.get(spec.stderr_key))}


def build_summary(harness: dict[str, Any], suite: Suite, run_info: dict[str, Any]) -> dict[str, Any]:
    """summary.json's content; ``run_info`` holds model, model_revision, dtype, batch_size, versions, ..."""
    tasks = {key: task_result(harness, spec) for key, spec in suite.tasks.items()}
    average = sum(entry["value"] for entry in tasks.values()) / len(tasks)
    return {"schema": 1, **run_info, "suite": suite.name, "tasks": tasks, "average": average}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def render_summary_md(summary: Summary) -> str:
    extra = summary.model_extra
    lines = [
        f"# {summary.model} — {summary.suite}",
        "",
        f"- revision: `{extra.get('model_revision')}`",
        f"- dtype: {summary.dtype}, batch size: {extra.get('batch_size')}, device: {extra.get('device')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in summary.versions.items()),
    ]
    if summary.limit is not None:
        lines.append(f"- **limit {summary.limit} documents per task: not comparable with leaderboard numbers**")
    lines += ["", "| Task | Metric | Shots | Score | ± stderr |", "|---|---|---:|---:|---:|"]
    for entry in summary.tasks.values():
        metric = entry.metric + (f" ({entry.filter})" if entry.filter else "")
        if entry.subtasks:
            metric += f", unweighted mean of {len(entry.subtasks)} subtasks"
        scores = f"{entry.num_fewshot} | {_pct(entry.value)} | {_pct(entry.stderr)}"
        lines.append(f"| {entry.label or entry.task} (`{entry.task}`) | {metric} | {scores} |")
    lines.append(f"| **Average** | | | **{_pct(summary.average)}** | |")
    return "\n".join(lines) + "\n"


def compare_table(summaries: list[Summary]) -> str:
    """Paper Table 1 style: one row per model, Average then one column per task (scores x100)."""
    if not summaries:
        raise UserError("nothing to compare: give at least one summary.json, eval folder or model")
    suites = sorted({s.suite for s in summaries})
    if len(suites) > 1:
        raise UserError(f"these summaries come from different suites ({', '.join(suites)}); compare one at a time")
    columns = {key: entry.label or key for s in summaries for key, entry in s.tasks.items()}
    lines = ["| Model | Average | " + " | ".join(columns.values()) + " |", "|---|---:|" + "---:|" * len(columns)]
    for s in summaries:
        cells = [_pct(s.tasks[key].value) if key in s.tasks else "—" for key in columns]
        name = s.model + (" *" if s.limit is not None else "")
        lines.append(f"| {name} | {_pct(s.average)} | " + " | ".join(cells) + " |")
    if any(s.limit is not None for s in summaries):
        lines += ["", "\\* evaluated with `--limit` (a subset of each task): not comparable with full runs."]
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_sample_logs(folder: Path, samples: dict[str, list[dict]]) -> dict[str, dict[str, str]]:
    """lm-eval's own per-sample files (`samples_<task>_<time>.jsonl`, as `lm_eval --log_samples` writes them)."""
    from lm_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(folder / "results.json"))  # a .json path: files go in folder
    tracker.date_id = utc_stamp()  # set by save_results_aggregated, which we do not call (harness.json is ours)
    logs = {}
    for task, rows in samples.items():
        tracker.save_results_samples(task_name=task, samples=rows)
        path = folder / f"samples_{task}_{tracker.date_id}.jsonl"  # lm-eval logs a failure to write it: hashing fails
        logs[task] = {"file": path.name, "sha256": _sha256(path)}
    return logs


def write_results(out_dir: Path, harness: dict[str, Any], summary: dict[str, Any], samples=None) -> Summary:
    """harness.json, the per-sample logs, summary.json (with the hashes of the files it was computed from) and
    summary.md, as one folder: a kill leaves the old set or the new one, never a mix."""
    from lm_eval.utils import handle_non_serializable  # how lm-eval writes its own results files

    raw = json.dumps(harness, indent=2, default=handle_non_serializable) + "\n"
    written: list[Summary] = []

    def write(folder: Path) -> None:
        logs = write_sample_logs(folder, samples or {}) or None
        checked = Summary.model_validate(
            {**summary, "harness_sha256": hashlib.sha256(raw.encode()).hexdigest(), "samples": logs}
        )
        (folder / "harness.json").write_text(raw, encoding="utf-8")
        (folder / "summary.md").write_text(render_summary_md(checked), encoding="utf-8")
        (folder / "summary.json").write_text(checked.model_dump_json(indent=2) + "\n", encoding="utf-8")
        written.append(checked)

    atomic_directory(out_dir, write)
    return written[0]


def find_summaries(model: str | Path, results_root: Path | None = None) -> list[Path]:
    """The summary.json of every suite `smaug eval run` wrote for ``model``."""
    return sorted(eval_dir(str(model), "_", root=results_root).parent.glob("*/summary.json"))


def load_summary(path: str | Path) -> Summary:
    """A summary.json written by `smaug eval run`, checked field by field and against the harness.json beside it."""
    path, hint = Path(path), "; pass a summary.json written by `smaug eval run`"
    try:
        data = path.read_bytes()
        if not data.strip():
            raise UserError(f"{path}: the file is empty{hint}")
        summary = Summary.model_validate(json.loads(data.decode("utf-8")))
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err}){hint}") from err
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}){hint}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}){hint}") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be a summary{hint}") from None
    except ValidationError as err:
        raise validation_error(err, str(path), hint) from None
    harness = path.parent / "harness.json"
    raw = harness.read_bytes() if summary.harness_sha256 and harness.is_file() else None
    if raw is not None and hashlib.sha256(raw).hexdigest() != summary.harness_sha256:
        raise UserError(
            f"{path} was not computed from the {harness.name} beside it (a run interrupted while writing, or files "
            "copied from two runs): run `smaug eval run` again"
        )
    return summary


def read_samples(summary_path: Path, summary: Summary, task: str) -> list[dict]:
    """The per-sample log of lm-eval task ``task`` beside ``summary_path``, checked against its recorded hash."""
    from smaug.common.files import read_jsonl

    log = (summary.samples or {}).get(task)
    if log is None:
        raise UserError(f"{summary_path}: no per-sample log of {task!r} (runs before smaug kept them); run it again")
    path = summary_path.parent / log.file
    if not path.is_file() or _sha256(path) != log.sha256:
        raise UserError(f"{path}: missing, or not the file {summary_path.name} was computed from; run it again")
    return read_jsonl(path, "lm-eval sample")


def _answer(sample: dict) -> str:
    """A model's answer as lm-eval logged it: the generated text, or the choice with the highest log-likelihood
    (a multiple-choice task logs one [log-likelihood, is-greedy] pair per choice, as strings)."""
    resps = sample.get("filtered_resps") or [""]
    if all(isinstance(r, list) and r for r in resps):
        lls = [float(r[0]) for r in resps]
        return f"choice {lls.index(max(lls))}"
    return " ".join(str(resps[0]).split())[:60]


def sample_diff(paths: list[Path], summaries: list[Summary], first: int) -> str:
    """For each task, the items the two models score differently on the reported metric, the first ``first``
    of them listed (Markdown). The summaries are of one suite (`compare_table` checks)."""
    lines = [f"A = {summaries[0].model}", f"B = {summaries[1].model}"]
    for key, entry in summaries[0].tasks.items():
        shown, differ, compared = [], 0, 0
        for task in entry.subtasks or [entry.task or key]:
            rows = []
            for path, summary in zip(paths, summaries):
                wanted = [s for s in read_samples(path, summary, task) if s.get("filter") == (entry.filter or "none")]
                rows.append({s["doc_id"]: s for s in wanted})
            for doc_id in sorted(rows[0].keys() & rows[1].keys()):
                x, y = rows[0][doc_id], rows[1][doc_id]
                if x.get("doc_hash") != y.get("doc_hash"):
                    raise UserError(f"{task} document {doc_id} differs between the two runs' sample logs")
                compared += 1
                if x.get(entry.metric) != y.get(entry.metric):
                    differ += 1
                    cells = [task, doc_id, " ".join(str(x.get("target")).split())[:40], x[entry.metric]]
                    cells += [y[entry.metric], _answer(x), _answer(y)]
                    shown += ["| " + " | ".join(map(str, cells)) + " |"] if len(shown) < first else []
        lines += ["", f"## {entry.label or key}: {differ} of {compared} items differ on {entry.metric}"]
        header = ["", "| Task | Doc | Target | A | B | A's answer | B's answer |", "|---|---:|---|---:|---:|---|---|"]
        lines += header + shown if shown else []
    return "\n".join(lines) + "\n"


def paper_table(entry, ours: dict[str, dict[str, float]]) -> str:
    """Our scores (label -> scores) beside the paper's ``entry`` (a suites.PaperResult), with ours − paper."""
    digits = 2 if entry.kind == "summary" else 3
    lines = [f"{entry.what}: the paper's {entry.where}" + (f" ({entry.note})" if entry.note else ""), ""]
    lines += ["| Score | Paper | " + " | ".join(f"{label} | Δ" for label in ours) + " |"]
    lines += ["|---|---:|" + "---:|---:|" * len(ours)]
    for key, paper in entry.scores.items():
        cells = [key, f"{paper:.{digits}f}" + (f" ± {entry.std[key]}" if key in entry.std else "")]
        for scores in ours.values():
            value = scores.get(key)
            cells += ["—", "—"] if value is None else [f"{value:.{digits}f}", f"{value - paper:+.{digits}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
