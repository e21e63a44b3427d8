"""Licence-aware model cards: `smaug release card MODEL_DIR` writes MODEL_DIR/README.md.

Everything on the card comes from what the repository already knows: the provenance chain
(`smaug_provenance.json`, walked through `parent`), the recipe YAML it names, the licence table
(`model_cards/licenses.yaml`) and `smaug eval` summaries. The card is built with huggingface_hub's own
`ModelCard` / `ModelCardData` / `EvalResult`, then checked locally (the Hub's remote validation cannot be
reached from here; see model_cards/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from axolotl_dpop.atomic import atomic_write
from smaug.common.hub import display_name, is_repo_id, looks_like_hub_id
from smaug.common.paths import MODEL_CARDS_DIR, REPO_ROOT, repo_path
from smaug.evaluation.summary import find_summaries, load_summary
from smaug.release.licenses import (
    LICENSE_TABLE,
    LICENSE_URLS,
    Lineage,
    license_fields_problem,
    resolve_license,
)
from smaug.release.provenance import LineageStage

CARD_TEMPLATE = MODEL_CARDS_DIR / "template.md"

PAPER_BIBTEX = """@article{pal2024smaug,
  title   = {Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive},
  author  = {Pal, Arka and Karkhanis, Deep and Dooley, Samuel and Roberts, Manley and Naidu, Siddartha and White, Colin},
  journal = {arXiv preprint arXiv:2402.13228},
  year    = {2024}
}"""

LOSS_NAMES = {
    "dpop": "DPO-Positive (DPOP)",
    "dpo": "DPO",
    "ipo": "IPO",
    "orpo": "ORPO",
    "kto": "KTO",
    "simpo": "SimPO",
    "slic": "SLiC (the Smaug paper's form)",
}
# (label, provenance/recipe key) in the order the card shows them.
HYPERPARAMETERS = [
    ("loss", "rl"),
    ("beta (rl_beta)", "rl_beta"),
    ("lambda (dpop_lambda)", "dpop_lambda"),
    ("lambda (slic_lambda)", "slic_lambda"),
    ("learning rate", "learning_rate"),
    ("max steps", "max_steps"),
    ("epochs", "num_epochs"),
    ("optimizer", "optimizer"),
    ("micro batch size", "micro_batch_size"),
    ("gradient accumulation steps", "gradient_accumulation_steps"),
    ("sequence length", "sequence_len"),
    ("lr scheduler", "lr_scheduler"),
    ("adapter", "adapter"),
    ("base loaded in 4-bit (QLoRA)", "load_in_4bit"),
    ("seed", "seed"),
]
METRIC_NAMES = {"acc_norm": "normalized accuracy", "acc": "accuracy", "mc2": "mc2", "exact_match": "exact match"}


# ----------------------------------------------------------------------------------------------- evals
def _suite_in_model_index(suite: Any, known: dict[str, Any]) -> bool:
    """eval/suites.yaml (``known``, loaded once) decides (`model_index: true`); a suite it does not define stays
    out of the metadata."""
    return isinstance(suite, str) and suite in known and known[suite].model_index


def _model_index_key(result) -> tuple:
    """What a result must share with the others filed under the same `unique_identifier` (huggingface_hub
    keeps the first one's dataset name, args and source for the whole group)."""
    return (result.task_name, result.dataset_name, result.dataset_args, result.source_name, result.source_url)


def eval_results_from_summaries(summaries: list[dict[str, Any]]):
    """EvalResults in the Open LLM Leaderboard's conventions, honestly sourced (a local lm-eval run), and one
    body-table row per summary entry.

    Only full runs (no --limit) of suites marked `model_index: true` enter the metadata, and only results
    that huggingface_hub's model-index keeps apart: it groups results by dataset type/config/split and
    writes the first one's dataset name for the whole group, so a result whose group already holds another
    dataset name, few-shot count or source, or the same metric, stays in the body table (with a note)."""
    from huggingface_hub import EvalResult

    from smaug.evaluation.suites import load_suites

    known = load_suites() if summaries else {}
    results, rows = [], []
    groups: dict[tuple, tuple[tuple, set[str], str]] = {}  # unique_identifier -> (group key, metrics, first row)
    for summary in summaries:
        lm_eval_version = (summary.get("versions") or {}).get("lm_eval", "unknown")
        source_name = f"Local lm-evaluation-harness {lm_eval_version} run (smaug eval, suite {summary.get('suite')})"
        source_url = f"https://github.com/EleutherAI/lm-evaluation-harness/tree/v{lm_eval_version}"
        in_index = _suite_in_model_index(summary.get("suite"), known)
        for key, task in summary["tasks"].items():
            ds = task["dataset"]
            fewshot = task.get("num_fewshot")
            value = round(100.0 * float(task["value"]), 2)
            stderr = task.get("stderr")
            row = {
                "task": task.get("label") or key,
                "lm_eval_task": task.get("task", key),
                "dataset": ds["name"],
                "metric": task["metric"] + (f" ({task['filter']})" if task.get("filter") else ""),
                "fewshot": fewshot,
                "value": f"{value:.2f}",
                "stderr": f"{100.0 * stderr:.2f}" if isinstance(stderr, (int, float)) else "",
                "suite": summary.get("suite"),
                "dtype": summary.get("dtype"),
                "note": None,
            }
            rows.append(row)
            if summary.get("limit") is not None:  # a subsample is not a leaderboard-comparable number
                row["note"] = f"limit {summary['limit']} docs/task: not comparable, not in the metadata"
                continue
            if not in_index:
                row["note"] = "smoke suite: not comparable, not in the metadata"
                continue
            result = EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                dataset_name=ds["name"],
                dataset_type=ds["type"],
                dataset_config=ds.get("config"),
                dataset_split=ds.get("split"),
                dataset_args={"num_few_shot": fewshot} if fewshot is not None else None,
                metric_type=task["metric"],
                metric_value=value,
                metric_name=METRIC_NAMES.get(task["metric"], task["metric"]),
                source_name=source_name,
                source_url=source_url,
            )
            label = f"{row['task']} ({row['suite']})"
            group_key, metrics, first = groups.setdefault(
                result.unique_identifier, (_model_index_key(result), set(), label)
            )
            if group_key != _model_index_key(result) or result.metric_type in metrics:
                row["note"] = f"same dataset identity as {first} in the metadata: body only"
                continue
            metrics.add(result.metric_type)
            results.append(result)
    return results, rows


def _check_model_index(model_name: str, results) -> None:
    """Every result must come back from the metadata once, under its own dataset: a failure here is a bug."""
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    def view(rs):
        return sorted(
            (
                r.dataset_name,
                r.dataset_type,
                str(r.dataset_config),
                str(r.dataset_split),
                str(r.dataset_args),
                r.metric_type,
                r.metric_value,
                r.source_name,
            )
            for r in rs
        )

    _, back = model_index_to_eval_results(eval_results_to_model_index(model_name, results))
    if view(back) != view(results):
        raise RuntimeError("the card's model-index would file eval results under the wrong dataset")


# ----------------------------------------------------------------------------------------------- card
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt", ".tsv")


def _is_hub_dataset(path: str | None) -> bool:
    """`org/name` that is not a local file: a Hub dataset id (local data files stay out of the metadata)."""
    return bool(path) and looks_like_hub_id(path) and not path.lower().endswith(DATA_FILE_SUFFIXES)


def _recipe_values(recipe: str | None) -> dict[str, Any]:
    """Hyperparameters from the recipe YAML the provenance names (fills keys the provenance lacks)."""
    if not recipe:
        return {}
    path = repo_path(recipe)
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    return {key: data[key] for _, key in HYPERPARAMETERS if key in data}


def _recipe_display(recipe: str | None) -> str | None:
    """Repo-relative when the recipe is ours (axolotl records absolute paths); never a local absolute path."""
    if not recipe:
        return None
    path = Path(recipe)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return path.name
    return recipe


def _fmt(key: str, value: Any) -> str:
    if key == "rl":
        return LOSS_NAMES.get(str(value), str(value))
    if value is None:
        return "none" if key == "adapter" else "n/a"
    return str(value)


def _lineage_view(lineage: Lineage) -> list[dict[str, Any]]:
    """Oldest first: Hub ancestors, then our local stages."""
    members = [
        {"name": e.model, "kind": "hub", "license": e.describe(), "url": f"https://huggingface.co/{e.model}"}
        for e in reversed(lineage.hub_chain)
    ]
    for stage in reversed(lineage.stages):
        prov = stage.provenance
        members.append(
            {
                "name": stage.name,
                "kind": "scratch" if stage.own_license else "local",
                "license": stage.own_license,
                "recipe": _recipe_display(prov.get("recipe")),
                "base_model": display_name(prov.get("base_model")),
                "rl": (prov.get("training") or {}).get("rl"),
            }
        )
    return members


def _stage_view(stage: LineageStage) -> dict[str, Any]:
    prov = stage.provenance
    training = {**_recipe_values(prov.get("recipe")), **(prov.get("training") or {})}  # provenance = what ran
    hw = prov.get("hardware") or {}
    hardware = ", ".join(
        str(part)
        for part in (
            hw.get("device_name") or hw.get("accelerator"),
            f"{hw['num_processes']} process(es)" if hw.get("num_processes") else None,
        )
        if part
    )
    return {
        "name": stage.name,
        "recipe": _recipe_display(prov.get("recipe")),
        "base_model": display_name(prov.get("base_model")),
        "base_model_revision": prov.get("base_model_revision"),
        "from_scratch": stage.own_license is not None,
        # Unset keys are left out (adapter: none = full fine-tune is worth saying); each lambda only for its loss.
        "hyperparameters": [
            (label, _fmt(key, training.get(key)))
            for label, key in HYPERPARAMETERS
            if (training.get(key) is not None or (key == "adapter" and key in training))
            and not (key in ("dpop_lambda", "slic_lambda") and training.get("rl") != key.removesuffix("_lambda"))
        ],
        "datasets": prov.get("datasets") or [],
        "hardware": hardware or "not recorded",
        "finished_at": prov.get("finished_at"),
    }


def render_card(
    model_dir: str | Path,
    eval_summaries: list[str | Path] | None = None,
    *,
    model_name: str | None = None,
    auto_evals: bool = True,
    results_root: Path | None = None,
    table_path: str | Path = LICENSE_TABLE,
    template_path: str | Path = CARD_TEMPLATE,
    lineage: Lineage | None = None,
):
    """Build the model card of ``model_dir`` (not written; see `write_card`). Refuses unknown licences.
    ``lineage``: the model's already resolved licence lineage (publish has it), else resolved here."""
    import huggingface_hub
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    lineage = lineage or resolve_license(model_dir, table_path=table_path)
    summary_paths = [Path(p) for p in (eval_summaries or [])]
    if auto_evals:
        summary_paths += [p for p in find_summaries(model_dir, results_root) if p not in summary_paths]
    summaries = [load_summary(p) for p in summary_paths]
    eval_results, eval_rows = eval_results_from_summaries(summaries)

    name = model_name or model_dir.resolve().name
    _check_model_index(name, eval_results)
    stage_views = [_stage_view(s) for s in reversed(lineage.stages)]  # oldest first
    hub_datasets, local_datasets = [], []
    for view in stage_views:
        for ds in view["datasets"]:
            target = hub_datasets if _is_hub_dataset(ds.get("path")) else local_datasets
            if ds.get("path") not in [d.get("path") for d in target]:
                target.append(ds)
    rl_used = {(s.provenance.get("training") or {}).get("rl") for s in lineage.stages} - {None}
    tags = ["smaug"] + (["dpop"] if "dpop" in rl_used else []) + sorted(rl_used - {"dpop"}) + ["axolotl", "trl"]
    lic = lineage.license
    card_data = ModelCardData(
        model_name=name if eval_results else None,  # only model-index uses it
        base_model=lineage.hub_chain[0].model if lineage.hub_chain else None,
        datasets=[d["path"] for d in hub_datasets] or None,
        tags=tags,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=lic.license,
        license_name=lic.license_name if lic.license == "other" else None,
        license_link=lic.license_link if lic.license == "other" else None,
        eval_results=eval_results or None,
    )
    newest = lineage.stages[0].provenance
    versions = dict(newest.get("versions") or {})
    for summary in summaries:
        for key, value in (summary.get("versions") or {}).items():
            versions.setdefault(key, value)  # training versions win; eval adds lm_eval
    versions["huggingface_hub (card)"] = huggingface_hub.__version__
    averages = [
        (s.get("suite"), f"{100.0 * s['average']:.2f}", s.get("limit"))
        for s in summaries
        if isinstance(s.get("average"), (int, float))
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_title=name,
        lineage=_lineage_view(lineage),
        stages=stage_views,
        trained=any(not v["from_scratch"] for v in stage_views),
        hub_datasets=hub_datasets,
        local_datasets=local_datasets,
        eval_rows=eval_rows,
        averages=averages,
        eval_sources=[s["_path"] for s in summaries],
        license_id=lic.license,
        license_display=lic.describe(),
        license_url=lic.license_link or lic.url or LICENSE_URLS.get(lic.license),
        license_decided_by=lineage.decided_by,
        versions=sorted(versions.items()),
        citation=PAPER_BIBTEX,
    )
    problems = check_card(card.content)
    if problems:  # our own output failing our checks is a bug, not a user error
        raise RuntimeError("rendered card fails local checks: " + "; ".join(problems))
    return card


def check_card(content: str) -> list[str]:
    """Local stand-ins for the Hub's metadata validation (which needs the network): returns problems."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    try:
        card = ModelCard(content)  # parses the YAML into ModelCardData (raises on a bad model-index)
    except Exception as err:  # noqa: BLE001 - any parse failure is a problem to report
        return [f"metadata does not parse: {err}"]
    data = card.data.to_dict()
    problems = []
    problem = license_fields_problem(data.get("license"), data.get("license_name"), data.get("license_link"))
    if problem:
        problems.append(problem)
    if "model-index" in data:
        try:
            _, results = model_index_to_eval_results(data["model-index"])
            if not results:
                problems.append("model-index has no results")
        except (KeyError, TypeError, ValueError) as err:
            problems.append(f"model-index does not parse: {err}")
    base = data.get("base_model")
    for b in [base] if isinstance(base, str) else (base or []):
        if not is_repo_id(b):
            problems.append(f"base_model {b!r} is not a Hub id")
    for key, expected in (("library_name", "transformers"), ("pipeline_tag", "text-generation")):
        if data.get(key) != expected:
            problems.append(f"{key} is {data.get(key)!r}, expected {expected!r}")
    return problems


def write_card(model_dir: str | Path, card) -> Path:
    """Write README.md atomically, then load it back and make sure the metadata round-trips."""
    from huggingface_hub import ModelCard

    target = Path(model_dir) / "README.md"

    def write_and_check(tmp: Path) -> None:
        tmp.write_text(str(card), encoding="utf-8")
        if ModelCard.load(tmp).data.to_dict() != card.data.to_dict():
            raise RuntimeError(f"{target}: card metadata does not round-trip through ModelCard")

    atomic_write(target, write_and_check)
    return target
