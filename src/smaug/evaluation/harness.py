"""`smaug eval run`: a suite through lm-evaluation-harness's Python API, the results written to
`smaug.common.paths.eval_dir(model, suite)`; every input is checked before lm-eval or the model loads."""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from axolotl_dpop.provenance import PROVENANCE_FILE, package_versions, read_provenance, utc_stamp
from smaug.common.errors import UserError
from smaug.common.files import check_output_folder
from smaug.common.hub import check_model_ref, hub_offline
from smaug.common.paths import REPO_ROOT, eval_dir
from smaug.evaluation.models import BACKENDS, DTYPES, check_vllm, default_dtype, resolve_device
from smaug.evaluation.suites import TASKS_DIR, Suite, get_suite
from smaug.evaluation.summary import build_summary, write_results

_RECORDED_PACKAGES = ("lm_eval", "transformers", "torch", "datasets", "smaug-dpop")


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as recorded in summaries: the Hub id, or the absolute folder path
    local: bool
    revision: str | None  # the Hub commit, or a content hash of a local folder
    provenance: dict[str, Any] | None = None


def resolve_model(model: str, revision: str | None = None) -> ResolvedModel:
    """A local model folder or a Hub id, checked without loading anything heavy."""
    folder = check_model_ref(model, revision=revision)
    if folder is None and hub_offline():
        from huggingface_hub import try_to_load_from_cache

        commit = Path(try_to_load_from_cache(model, "config.json", revision=revision)).parent.name  # snapshots/<commit>
        return ResolvedModel(model, local=False, revision=commit)
    if folder is None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            revision = HfApi().model_info(model, revision=revision).sha
        except RepositoryNotFoundError as err:
            raise UserError(
                f"{model!r} is no model on the Hub (private or gated? `hf auth login` or set HF_TOKEN)"
            ) from err
        except RevisionNotFoundError as err:
            raise UserError(f"{model!r} has no revision {revision!r} on the Hub") from err
        except (HfHubHTTPError, OSError):  # the Hub unreachable: lm-eval may still find it in the cache
            pass
        return ResolvedModel(model, local=False, revision=revision)
    if revision:
        raise UserError(f"--revision {revision} only applies to Hub models, and {model} is a local folder")
    # Hashing tens of GB of weights is too slow: the config and provenance, with the weight files' names and
    # sizes, identify the folder's content well enough.
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    provenance = None
    if (folder / PROVENANCE_FILE).is_file():
        digest.update((folder / PROVENANCE_FILE).read_bytes())
        try:
            record = read_provenance(folder)
        except ValueError as err:
            raise UserError(str(err)) from None
        provenance = {k: getattr(record, k) for k in ("recipe", "base_model", "base_model_revision", "finished_at")}
    return ResolvedModel(
        str(folder), local=True, revision=f"local-sha256:{digest.hexdigest()[:16]}", provenance=provenance
    )


def task_manager_for(suite: Suite):
    """A TaskManager that knows our eval/tasks/ configs, and the harness's own only if the suite needs them
    (indexing its thousands of task YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager

    ours = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    if all(ours._name_is_registered(spec.task) for spec in suite.tasks.values()):
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
    return [leaf for m in members for leaf in _leaf_task_names(task_manager, m["task"] if isinstance(m, dict) else m)]


def check_suite_tasks(suite: Suite, task_manager) -> dict[str, dict[str, Any]]:
    """Every task of the suite as lm-eval will build it (its config and our overrides, parsed into lm-eval's
    TaskConfig), with the metric and filter we report; nothing downloaded. {task key: {leaf task: TaskConfig}}."""
    from lm_eval.config.task import TaskConfig

    checked: dict[str, dict[str, Any]] = {}
    for key, spec in suite.tasks.items():
        where = f"eval/suites.yaml: suites.{suite.name}.tasks.{key}"
        leaves = _leaf_task_names(task_manager, spec.task)
        if spec.aggregation == "unweighted_mean_of_subtasks" and leaves == [spec.task]:
            raise UserError(f"{where}: aggregation unweighted_mean_of_subtasks needs a group, {spec.task!r} is a task")
        checked[key] = {}
        for leaf in leaves:
            try:
                config = TaskConfig(**{**task_manager._get_config(leaf), **spec.harness_config(), "task": leaf})
            except (TypeError, ValueError) as err:
                raise UserError(f"{where}: lm-eval rejects the config of {leaf!r}: {err}") from err
            metrics = [m["metric"] for m in config.metric_list or []]
            filters = [f["name"] for f in config.filter_list or []]
            if spec.metric not in metrics:
                raise UserError(f"{where}: {leaf!r} has no metric {spec.metric!r} (it has {', '.join(metrics)})")
            if spec.filter and spec.filter not in filters:
                raise UserError(
                    f"{where}: {leaf!r} has no filter {spec.filter!r} (it has {', '.join(filters) or 'none'})"
                )
            checked[key][leaf] = config
    return checked


def backend_arguments(
    backend: str, resolved: ResolvedModel, *, dtype: str, trust_remote_code: bool = False, num_gpus: int = 1
) -> dict[str, Any]:
    """lm-eval's model_args for ``backend``: the same model, revision and dtype for both; vLLM adds tensor
    parallelism. Everything else a score depends on (tasks, shots, batch size, limit) is passed the same way."""
    args: dict[str, Any] = {"pretrained": resolved.name, "dtype": dtype, "trust_remote_code": trust_remote_code}
    args.update({} if resolved.local or not resolved.revision else {"revision": resolved.revision})
    return args | ({"tensor_parallel_size": num_gpus} if backend == "vllm" else {})


def evaluate(
    model: str,
    suite_name: str,
    *,
    dtype: str | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    limit: int | float | None = None,
    revision: str | None = None,
    results_root: Path | None = None,
    trust_remote_code: bool = False,
    backend: str = "hf",
    num_gpus: int = 1,
) -> Path:
    """Score ``model`` on ``suite_name``; write harness.json, lm-eval's per-sample logs, summary.json and
    summary.md; return their folder. ``dtype`` None: `models.default_dtype` for the device."""
    suite = get_suite(suite_name)
    if dtype not in (*DTYPES, None):
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if isinstance(limit, bool) or not (limit is None or whole_or_fraction(limit)):
        raise UserError(f"--limit {limit!r}: must be a whole number of documents per task, or a fraction in (0, 1)")
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "hf" and num_gpus != 1:
        raise UserError(f"--num-gpus {num_gpus}: the hf backend runs on one device; use --backend vllm")
    if backend == "vllm":
        check_vllm(num_gpus)
    resolved = resolve_model(model, revision)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    out_dir = eval_dir(resolved.name, suite.name, results_root)
    check_output_folder(out_dir, f"results folder {out_dir}:")  # before the model loads, not after the run
    task_manager = task_manager_for(suite)
    check_suite_tasks(suite, task_manager)  # a typo in suites.yaml fails here, before the model loads
    model_args = backend_arguments(
        backend, resolved, dtype=dtype, trust_remote_code=trust_remote_code, num_gpus=num_gpus
    )
    import lm_eval

    # Our task configs name their data files relative to the repository root, and lm-eval resolves them
    # against the working directory (model paths are absolute).
    with contextlib.chdir(REPO_ROOT):
        harness = lm_eval.simple_evaluate(
            model=backend,
            model_args=model_args,
            tasks=[spec.harness_config() for spec in suite.tasks.values()],
            batch_size=batch_size,
            device=device,
            limit=limit,
            task_manager=task_manager,
            log_samples=True,
        )
    if harness is None:  # non-zero ranks in a distributed run
        raise RuntimeError("lm-eval returned no results on this process")
    samples = harness.pop("samples")
    versions = package_versions(*_RECORDED_PACKAGES, *(["vllm"] if backend == "vllm" else []))
    versions["lm_eval"] = harness.get("lm_eval_version") or versions["lm_eval"]
    run_info = dict(model=resolved.name, model_revision=resolved.revision, dtype=dtype, batch_size=batch_size)
    run_info |= dict(device=device, backend=backend, model_args=model_args, limit=limit, versions=versions)
    run_info |= dict(created_at=utc_stamp(), model_provenance=resolved.provenance)
    write_results(out_dir, harness, build_summary(harness, suite, run_info), samples)
    return out_dir


def whole_or_fraction(limit: object) -> bool:
    """lm-eval's --limit: a whole number of documents per task, or a fraction in (0, 1)."""
    whole = isinstance(limit, (int, float)) and math.isfinite(limit) and float(limit).is_integer() and limit >= 1
    return whole or isinstance(limit, float) and 0 < limit < 1
