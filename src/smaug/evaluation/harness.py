"""Run a suite through lm-evaluation-harness (its Python API) and write the results where the card code
looks: `smaug.common.paths.eval_dir(model, suite)`.

Everything that can be wrong with the input (model path, Hub id while offline, suite name) is checked
before lm-eval or the model is loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axolotl_dpop.provenance import PROVENANCE_FILE, package_versions, read_provenance, utc_stamp
from smaug.common.errors import UserError
from smaug.common.files import check_output_folder
from smaug.common.hub import hub_offline, is_repo_id
from smaug.common.paths import REPO_ROOT, eval_dir
from smaug.evaluation.models import resolve_device
from smaug.evaluation.suites import TASKS_DIR, Suite, get_suite
from smaug.evaluation.summary import build_summary, write_results

DTYPES = ("bfloat16", "float16", "float32", "auto")
_RECORDED_PACKAGES = ("lm_eval", "transformers", "torch", "datasets", "smaug-dpop")


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as recorded in summaries: the Hub id, or the absolute folder path
    pretrained: str  # what lm-eval's `hf` model loads
    local: bool
    revision: str | None  # Hub commit hash, or a content hash for a local folder
    provenance: dict[str, Any] | None = field(default=None)


def _looks_like_path(model: str) -> bool:
    if model.startswith(("/", "./", "../", "~", ".\\")) or not is_repo_id(model, namespace=False):
        return True
    # `outputs/run1` where `outputs/` exists here is a path someone mistyped, not a Hub id.
    return "/" in model and Path(model).expanduser().parent.is_dir()


def _local_model(path: Path) -> ResolvedModel:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(
            f"{path}: not a model folder (no config.json); pass the output_dir of a training run "
            "(merged weights), a folder written by save_pretrained, or a Hub id"
        )
    config = (path / "config.json").read_bytes()
    try:
        if not isinstance(json.loads(config.decode("utf-8")), dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(
            f"{path / 'config.json'}: not a model config ({err}); re-save the model with save_pretrained"
        ) from None
    # Hashing tens of GB of weights is too slow: config + provenance identify the folder's content well enough
    # together with the weight file names and sizes.
    digest = hashlib.sha256(config)
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    provenance = None
    prov_file = path / PROVENANCE_FILE
    if prov_file.is_file():
        digest.update(prov_file.read_bytes())
        try:
            provenance = read_provenance(path).record()
        except ValueError as err:
            raise UserError(str(err)) from None
    return ResolvedModel(
        name=str(path),
        pretrained=str(path),
        local=True,
        revision=f"local-sha256:{digest.hexdigest()[:16]}",
        provenance=provenance,
    )


def _hub_model(repo_id: str, revision: str | None) -> ResolvedModel:
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        if not isinstance(cached, str):
            raise UserError(
                f"{repo_id!r} (revision {revision or 'main'}) is not in the local Hugging Face cache and "
                "HF_HUB_OFFLINE=1 forbids downloading it: download it first (`hf download "
                f"{repo_id}`) or unset HF_HUB_OFFLINE; for a local folder give its path (./{repo_id})"
            )
        commit = Path(cached).parent.name  # .../snapshots/<commit>/config.json
        return ResolvedModel(name=repo_id, pretrained=repo_id, local=False, revision=commit)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        sha = HfApi().model_info(repo_id, revision=revision).sha
    except RepositoryNotFoundError as err:
        raise UserError(
            f"{repo_id!r} is neither a local folder nor a model on the Hub (if it is private or "
            "gated, log in with `hf auth login` or set HF_TOKEN)"
        ) from err
    except RevisionNotFoundError as err:
        raise UserError(f"{repo_id!r} has no revision {revision!r} on the Hub") from err
    except (HfHubHTTPError, OSError):  # Hub unreachable: lm-eval may still find it in the cache
        sha = revision
    return ResolvedModel(name=repo_id, pretrained=repo_id, local=False, revision=sha)


def resolve_model(model: str, revision: str | None = None) -> ResolvedModel:
    """A local model folder or a Hub id, checked without loading anything heavy."""
    path = Path(model).expanduser()
    if path.exists():
        if revision:
            raise UserError(f"--revision {revision} only applies to Hub models, and {model} is a local folder")
        return _local_model(path.resolve())
    if _looks_like_path(model):
        raise UserError(
            f"model folder {model} does not exist (resolved to {path.resolve()}); check the path, or "
            "train/download the model first"
        )
    return _hub_model(model, revision)


def task_manager_for(suite: Suite):
    """A TaskManager that knows our eval/tasks/ configs, and the harness's own ones only if the suite needs
    them (indexing the harness's thousands of task YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if all(ours._name_is_registered(spec.task) for spec in suite.tasks):
        return ours
    return TaskManager(include_path=str(TASKS_DIR))


def _leaf_task_names(task_manager, name: str) -> list[str]:
    """The plain tasks a task/group/tag name stands for, read from lm-eval's index (nothing downloaded)."""
    if task_manager._name_is_task(name) or task_manager._name_is_python_task(name):
        return [name]
    if not task_manager._name_is_registered(name):
        raise UserError(f"lm-eval knows no task, group or tag {name!r} (looked in the harness and {TASKS_DIR})")
    members = task_manager._get_tasklist(name)
    if members == -1:  # a group defined by its own YAML
        members = task_manager._get_config(name)["task"]
    leaves: list[str] = []
    for member in members:
        leaves.extend(_leaf_task_names(task_manager, member["task"] if isinstance(member, dict) else member))
    return leaves


def check_suite_tasks(suite: Suite, task_manager) -> dict[str, dict[str, Any]]:
    """Validate every task of the suite the way lm-eval will build it (its config + our per-task overrides,
    parsed into lm-eval's TaskConfig), and that the metric/filter we report exists, without downloading any
    dataset. Returns {suite task key: {leaf task name: TaskConfig}}."""
    from lm_eval.config.task import TaskConfig

    checked: dict[str, dict[str, Any]] = {}
    for spec in suite.tasks:
        where = f"eval/suites.yaml: suites.{suite.name}.tasks.{spec.key}"
        leaves = _leaf_task_names(task_manager, spec.task)
        if spec.aggregation == "unweighted_mean_of_subtasks" and leaves == [spec.task]:
            raise UserError(f"{where}: aggregation unweighted_mean_of_subtasks needs a group, {spec.task!r} is a task")
        configs = {}
        for leaf in leaves:
            overrides = {k: v for k, v in spec.harness_config().items() if k != "task"}
            try:
                config = TaskConfig(**{**task_manager._get_config(leaf), **overrides})
            except (TypeError, ValueError) as err:
                raise UserError(f"{where}: lm-eval rejects the config of {leaf!r}: {err}") from err
            metrics = [m["metric"] for m in config.metric_list or []]
            if spec.metric not in metrics:
                raise UserError(f"{where}: {leaf!r} has no metric {spec.metric!r} (it has {', '.join(metrics)})")
            filters = [f["name"] for f in config.filter_list or []]
            if spec.filter and spec.filter not in filters:
                have = ", ".join(filters) or "none"
                raise UserError(f"{where}: {leaf!r} has no filter {spec.filter!r} (it has {have})")
            configs[leaf] = config
        checked[spec.key] = configs
    return checked


def run_harness(
    model: ResolvedModel,
    suite: Suite,
    *,
    dtype: str,
    batch_size: int | str,
    device: str,
    limit: int | float | None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """lm-eval's simple_evaluate on the suite's tasks; returns its raw results dict (samples not logged)."""
    import lm_eval

    model_args: dict[str, Any] = {"pretrained": model.pretrained, "dtype": dtype}
    if not model.local and model.revision:
        model_args["revision"] = model.revision
    if trust_remote_code:
        model_args["trust_remote_code"] = True
    task_manager = task_manager_for(suite)
    check_suite_tasks(suite, task_manager)  # a typo in suites.yaml fails here, before the model loads
    # Our task configs name their data_files relative to the repository root, and lm-eval resolves them
    # against the working directory: run from there, whatever the caller's cwd (model paths are absolute).
    with contextlib.chdir(REPO_ROOT):
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=model_args,
            tasks=[spec.harness_config() for spec in suite.tasks],
            batch_size=batch_size,
            device=device,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
        )
    if results is None:  # non-zero ranks in a distributed run
        raise RuntimeError("lm-eval returned no results on this process")
    results.pop("samples", None)
    return results


def evaluate(
    model: str,
    suite_name: str,
    *,
    dtype: str = "bfloat16",
    batch_size: int | str = 8,
    device: str | None = None,
    limit: int | float | None = None,
    revision: str | None = None,
    results_root: Path | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Score `model` on `suite_name`; write harness.json, summary.json and summary.md; return their folder."""
    suite = get_suite(suite_name)
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, (int, float))
        or not math.isfinite(limit)
        or limit <= 0
        or (limit >= 1 and not float(limit).is_integer())
    ):
        raise UserError(f"--limit {limit!r}: must be a whole number of documents per task, or a fraction in (0, 1)")
    resolved = resolve_model(model, revision)
    device = resolve_device(device)
    out_dir = eval_dir(resolved.name, suite.name, results_root)
    check_output_folder(out_dir, f"results folder {out_dir}:")  # before the model loads, not after the run
    harness = run_harness(
        resolved,
        suite,
        dtype=dtype,
        batch_size=batch_size,
        device=device,
        limit=limit,
        trust_remote_code=trust_remote_code,
    )
    versions = package_versions(*_RECORDED_PACKAGES)
    versions["lm_eval"] = harness.get("lm_eval_version") or versions["lm_eval"]
    run_info: dict[str, Any] = {
        "model": resolved.name,
        "model_revision": resolved.revision,
        "dtype": dtype,
        "batch_size": batch_size,
        "device": device,
        "limit": limit,
        "versions": versions,
        "created_at": utc_stamp(),
    }
    if resolved.provenance is not None:
        run_info["model_provenance"] = {
            k: resolved.provenance.get(k) for k in ("recipe", "base_model", "base_model_revision", "finished_at")
        }
    summary = build_summary(harness, suite, run_info)
    write_results(out_dir, harness, summary)
    return out_dir
