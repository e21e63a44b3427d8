"""Licence-aware model cards: `smaug release card MODEL_DIR` writes MODEL_DIR/README.md from the lineage, the
recipes it names and `smaug eval` summaries, with huggingface_hub's ModelCard, checked locally (the Hub's own
validation needs the network; see model_cards/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from axolotl_dpop.atomic import atomic_write
from smaug.common.hub import display_name, looks_local, repo_id_problem
from smaug.common.licenses import LICENSE_URLS, LicenseEntry, license_fields_problem
from smaug.common.paths import MODEL_CARDS_DIR, rel, repo_path
from smaug.evaluation.summary import Summary, find_summaries, load_summary
from smaug.release.lineage import LICENSE_TABLE, Lineage, LineageStage, resolve_license

CARD_TEMPLATE = MODEL_CARDS_DIR / "template.md"
LOSS_NAMES = {"dpop": "DPO-Positive (DPOP)", "dpo": "DPO", "ipo": "IPO", "orpo": "ORPO", "kto": "KTO", "simpo": "SimPO"}
LOSS_NAMES["slic"] = "SLiC (the Smaug paper's form)"
# The provenance (or recipe) keys the card shows, in its order, labelled by their name in words unless named here.
HYPERPARAMETERS = """rl rl_beta dpop_lambda slic_lambda learning_rate max_steps num_epochs optimizer micro_batch_size
    gradient_accumulation_steps sequence_len lr_scheduler adapter load_in_4bit seed""".split()
LABELS = {
    "rl": "loss",
    "num_epochs": "epochs",
    "sequence_len": "sequence length",
    "load_in_4bit": "base loaded in 4-bit (QLoRA)",
}
LABELS |= {key: f"{key.split('_')[-1]} ({key})" for key in ("rl_beta", "dpop_lambda", "slic_lambda")}
METRIC_NAMES = {"acc_norm": "normalized accuracy", "acc": "accuracy", "mc2": "mc2", "exact_match": "exact match"}
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt", ".tsv")


def eval_results_from_summaries(summaries: list[Summary]):
    """EvalResults in the Open LLM Leaderboard's conventions, sourced as a local lm-eval run, and a body-table
    row per task. Only full runs (no --limit) of suites with `model_index: true` enter the metadata, and only
    results huggingface_hub keeps apart: it groups results by dataset type/config/split and keeps the first
    one's name, few-shot count and source for the group, so a result that would be merged stays in the body."""
    from huggingface_hub import EvalResult

    from smaug.evaluation.suites import load_suites

    known = load_suites() if summaries else {}
    results, rows, groups = [], [], {}  # unique_identifier -> (what the group shares, its metrics, first row)
    for summary in summaries:
        version = summary.versions.get("lm_eval") or "unknown"
        source_name = f"Local lm-evaluation-harness {version} run (smaug eval, suite {summary.suite})"
        source_url = f"https://github.com/EleutherAI/lm-evaluation-harness/tree/v{version}"
        index = summary.suite in known and known[summary.suite].model_index
        note = None if index else "smoke suite: not comparable, not in the metadata"
        note = (
            note if summary.limit is None else f"limit {summary.limit} docs/task: not comparable, not in the metadata"
        )
        for key, task in summary.tasks.items():
            metric = task.metric + (f" ({task.filter})" if task.filter else "")
            row = dict(task=task.label or key, lm_eval_task=task.task or key, dataset=task.dataset.name, metric=metric)
            stderr = "" if task.stderr is None else f"{100.0 * task.stderr:.2f}"
            row.update(fewshot=task.num_fewshot, value=f"{100.0 * task.value:.2f}", stderr=stderr, note=note)
            rows.append(row | {"suite": summary.suite, "dtype": summary.dtype})
            if note:
                continue
            dataset = {f"dataset_{field}": value for field, value in task.dataset.model_dump().items()}
            shots = None if task.num_fewshot is None else {"num_few_shot": task.num_fewshot}
            metric = dict(
                metric_type=task.metric,
                metric_value=round(100.0 * task.value, 2),
                metric_name=METRIC_NAMES.get(task.metric, task.metric),
            )
            result = EvalResult(
                task_type="text-generation",
                task_name="Text Generation",
                **dataset,
                dataset_args=shots,
                **metric,
                source_name=source_name,
                source_url=source_url,
            )
            shared = (result.task_name, result.dataset_name, result.dataset_args, source_name, source_url)
            first = groups.setdefault(result.unique_identifier, (shared, set(), f"{row['task']} ({summary.suite})"))
            if first[0] != shared or result.metric_type in first[1]:
                rows[-1]["note"] = f"same dataset identity as {first[2]} in the metadata: body only"
                continue
            first[1].add(result.metric_type)
            results.append(result)
    return results, rows


def _check_model_index(model_name: str, results) -> None:
    """Every result must come back from the metadata once, under its own dataset: a failure here is a bug."""
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    _, back = model_index_to_eval_results(eval_results_to_model_index(model_name, results))
    if sorted(map(repr, back)) != sorted(map(repr, results)):  # every field of every result, in any order
        raise RuntimeError("the card's model-index would file eval results under the wrong dataset")


def _recipe(recipe: str | None) -> tuple[str | None, dict[str, Any]]:
    """How the card names a recipe (never a local absolute path), and the hyperparameters it sets."""
    if not recipe:
        return None, {}
    path = repo_path(recipe)
    shown = rel(path) if not Path(rel(path)).is_absolute() else path.name
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError:
        data = {}
    return shown, {key: data[key] for key in HYPERPARAMETERS if key in (data or {})}


def _stage_view(stage: LineageStage) -> dict[str, Any]:
    record = stage.provenance
    recipe, from_recipe = _recipe(record.recipe)
    training = {**from_recipe, **(record.training or {})}  # the provenance says what actually ran
    hw = record.hardware or {}
    processes = f"{hw['num_processes']} process(es)" if hw.get("num_processes") else None
    hardware = ", ".join(str(p) for p in (hw.get("device_name") or hw.get("accelerator"), processes) if p)
    hyperparameters = []
    for key in HYPERPARAMETERS:  # unset keys left out (adapter: none says "full fine-tune"); a lambda with its loss
        value = training.get(key)
        lambda_of_another_loss = key.endswith("_lambda") and training.get("rl") != key.removesuffix("_lambda")
        if (value is None and not (key == "adapter" and key in training)) or lambda_of_another_loss:
            continue
        shown = LOSS_NAMES.get(str(value), str(value)) if key == "rl" else "none" if value is None else str(value)
        hyperparameters.append((LABELS.get(key, key.replace("_", " ")), shown))
    view = record.model_dump(include={"base_model_revision", "license", "datasets", "finished_at"})
    view |= dict(name=stage.name, recipe=recipe, base_model=display_name(record.base_model), rl=training.get("rl"))
    view |= dict(from_scratch=record.license is not None, hardware=hardware or "not recorded")
    return view | {"hyperparameters": hyperparameters}


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
    """The model card of ``model_dir`` (not written; see `write_card`); unknown licences are refused.
    ``lineage``: the model's resolved licence lineage when the caller has it."""
    import huggingface_hub
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    lineage = lineage or resolve_license(model_dir, table_path=table_path)
    paths = [Path(p) for p in eval_summaries or []]
    paths += [p for p in (find_summaries(model_dir, results_root) if auto_evals else []) if p not in paths]
    summaries = [load_summary(p) for p in paths]
    shown = [
        rel(p.parent) if not Path(rel(p.parent)).is_absolute() else ".../" + "/".join(p.parent.parts[-3:])
        for p in paths
    ]
    eval_results, eval_rows = eval_results_from_summaries(summaries)
    name = model_name or model_dir.resolve().name
    _check_model_index(name, eval_results)
    stages = [_stage_view(s) for s in reversed(lineage.stages)]  # oldest first
    paths = [ds.get("path") for stage in stages for ds in stage["datasets"]]
    hub_datasets = [p for p in dict.fromkeys(paths) if p and not (looks_local(p) or p.endswith(DATA_FILE_SUFFIXES))]
    rl_used = {s["rl"] for s in stages} - {None}
    lic = lineage.license
    other = lic.license == "other"
    card_data = ModelCardData(
        model_name=name if eval_results else None,  # only model-index uses it
        base_model=lineage.hub_chain[0].model if lineage.hub_chain else None,
        datasets=hub_datasets or None,  # local data files stay in the body
        tags=["smaug", *(["dpop"] if "dpop" in rl_used else []), *sorted(rl_used - {"dpop"}), "axolotl", "trl"],
        library_name="transformers",
        pipeline_tag="text-generation",
        license=lic.license,
        license_name=lic.license_name if other else None,
        license_link=lic.license_link if other else None,
        eval_results=eval_results or None,
    )
    versions = dict(lineage.stages[0].provenance.versions)
    for summary in summaries:
        versions = {**summary.versions, **versions}  # the training's versions win; eval adds lm_eval
    versions["huggingface_hub (card)"] = huggingface_hub.__version__
    hub_members = [{"name": e.model, "kind": "hub", "license": e.describe()} for e in reversed(lineage.hub_chain)]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_title=name,
        lineage=hub_members + [{**s, "kind": "scratch" if s["from_scratch"] else "local"} for s in stages],
        stages=stages,
        trained=any(not s["from_scratch"] for s in stages),
        eval_rows=eval_rows,
        averages=[(s.suite, f"{100.0 * s.average:.2f}", s.limit) for s in summaries],
        details=[(s.suite, folder, len(s.samples or {})) for s, folder in zip(summaries, shown)],
        license_display=lic.describe(),
        license_url=lic.license_link or lic.url or LICENSE_URLS.get(lic.license),
        license_decided_by=lineage.decided_by,
        versions=sorted(versions.items()),
    )
    return card


def check_card(content: str, licence: LicenseEntry | None = None) -> list[str]:
    """Local stand-ins for the Hub's metadata validation (which needs the network), and the lineage's ``licence``
    when given: the problems found."""
    from huggingface_hub import ModelCard

    try:
        data = ModelCard(content).data  # parses the metadata, model-index included
    except Exception as err:  # noqa: BLE001 - any parse failure is a problem to report
        return [f"metadata does not parse: {err}"]
    bases = [data.base_model] if isinstance(data.base_model, str) else data.base_model or []
    problems = [license_fields_problem(data.license, data.license_name, data.license_link)]
    problems += [f"base_model {base!r} is not a Hub id" for base in bases if repo_id_problem(base)]
    for key, expected in (("library_name", "transformers"), ("pipeline_tag", "text-generation")):
        problems.append(
            None if getattr(data, key) == expected else f"{key} is {getattr(data, key)!r}, not {expected!r}"
        )
    other = licence is not None and licence.license == "other"
    if licence is not None and (data.license, data.license_name) != (
        licence.license,
        licence.license_name if other else None,
    ):
        problems.append(
            f"its licence ({data.license}, {data.license_name}) differs from the lineage's ({licence.describe()})"
        )
    return [problem for problem in problems if problem]


def write_card(model_dir: str | Path, card) -> Path:
    """README.md written atomically once its metadata round-trips through ModelCard.load."""
    from huggingface_hub import ModelCard

    target = Path(model_dir) / "README.md"

    def write_and_check(tmp: Path) -> None:
        tmp.write_text(str(card), encoding="utf-8")
        if ModelCard.load(tmp).data.to_dict() != card.data.to_dict():
            raise RuntimeError(f"{target}: card metadata does not round-trip through ModelCard")

    return atomic_write(target, write_and_check)
