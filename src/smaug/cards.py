"""Licence-aware model cards: `smaug card MODEL_DIR` writes MODEL_DIR/README.md.

Everything on the card comes from what the repository already knows: the provenance chain
(`smaug_provenance.json`, walked through `parent`), the recipe YAML it names, the licence table
(`model_cards/licenses.yaml`) and `smaug eval` summaries. The card is built with huggingface_hub's own
`ModelCard` / `ModelCardData` / `EvalResult`, then checked locally (the Hub's remote validation cannot be
reached from here; see model_cards/README.md).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smaug import paths
from smaug.atomic import atomic_write
from smaug.errors import UserError
from smaug.provenance import Stage, display_name, local_stages, looks_like_hub_id

LICENSE_TABLE = paths.MODEL_CARDS_DIR / "licenses.yaml"
CARD_TEMPLATE = paths.MODEL_CARDS_DIR / "template.md"

# Licence identifiers the Hub accepts in card metadata, copied from huggingface/hub-docs
# docs/hub/repositories-licenses.md (the "region licenses" table). Kept in code because the Hub's own
# validation endpoint cannot be reached offline.
HUB_LICENSE_IDS = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
    bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc
    cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0
    cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0
    cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1
    agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++
    osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license llama2 gemma unknown other
    """.split()
)
LICENSE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # `license_name` is a slug on the Hub
LICENSE_URLS = {"apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0", "mit": "https://opensource.org/license/mit"}

PAPER_BIBTEX = """@article{pal2024smaug,
  title   = {Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive},
  author  = {Pal, Arka and Karkhanis, Deep and Dooley, Samuel and Roberts, Manley and Naidu, Siddartha and White, Colin},
  journal = {arXiv preprint arXiv:2402.13228},
  year    = {2024}
}"""

LOSS_NAMES = {"dpop": "DPO-Positive (DPOP)", "dpo": "DPO", "ipo": "IPO", "orpo": "ORPO", "kto": "KTO", "simpo": "SimPO",
              "slic": "SLiC (the Smaug paper's form)"}
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
LEADERBOARD_URL = "https://huggingface.co/spaces/open-llm-leaderboard-old/open_llm_leaderboard"
METRIC_NAMES = {"acc_norm": "normalized accuracy", "acc": "accuracy", "mc2": "mc2", "exact_match": "exact match"}


# ----------------------------------------------------------------------------------------------- licences
@dataclass
class LicenseEntry:
    model: str
    license: str
    license_name: str | None = None
    license_link: str | None = None
    url: str | None = None
    parent: str | None = None
    supersedes_parent: str | None = None
    source: str | None = None

    def same_terms(self, other: "LicenseEntry") -> bool:
        return (self.license, self.license_name) == (other.license, other.license_name)

    def describe(self) -> str:
        return self.license_name if self.license == "other" else self.license


def _license_fields_problem(license_id: Any, name: Any, link: Any) -> str | None:
    """Why these licence fields would not pass the Hub's metadata checks (None when they would)."""
    if license_id not in HUB_LICENSE_IDS:
        return f"license {license_id!r} is not a Hub licence id (see HUB_LICENSE_IDS / hub-docs repositories-licenses.md)"
    if license_id == "other":
        if not isinstance(name, str) or not LICENSE_NAME_RE.match(name):
            return "license: other needs license_name, a lowercase slug such as `yi-license`"
        if not isinstance(link, str) or not link.startswith(("https://", "http://")):
            return "license: other needs license_link, an absolute URL to the licence text"
    return None


def load_license_table(path: str | Path = LICENSE_TABLE) -> dict[str, LicenseEntry]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the licence table ({err}).") from err
    if not isinstance(raw, dict) or raw.get("schema") != 1 or not isinstance(raw.get("models"), dict):
        raise UserError(f"{path}: expected `schema: 1` and a `models:` mapping of Hub id -> licence fields.")
    table: dict[str, LicenseEntry] = {}
    known = {f for f in LicenseEntry.__dataclass_fields__ if f != "model"}
    for model, fields in raw["models"].items():
        if not isinstance(fields, dict) or "license" not in fields:
            raise UserError(f"{path}: models.{model}: needs at least `license:`.")
        unknown = set(fields) - known
        if unknown:
            raise UserError(f"{path}: models.{model}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}.")
        entry = LicenseEntry(model=model, **fields)
        problem = _license_fields_problem(entry.license, entry.license_name, entry.license_link)
        if problem:
            raise UserError(f"{path}: models.{model}: {problem}.")
        table[model] = entry
    for entry in table.values():
        if entry.parent is not None and entry.parent not in table:
            raise UserError(f"{path}: models.{entry.model}.parent {entry.parent!r} is not in the table; add it too.")
    return table


def missing_entry_message(hub_id: str, lineage: list[str], table_path: Path) -> str:
    chain = " <- ".join(lineage + [hub_id])
    return (
        f"no licence is known for base model {hub_id!r} (lineage: {chain}), so no card can be written.\n"
        f"Read the licence on https://huggingface.co/{hub_id} and add it to {table_path} under `models:`:\n\n"
        f"  {hub_id}:\n"
        f"    parent: null            # or the Hub id it was trained from, if that is in the table too\n"
        f"    license: <Hub licence id from its card, e.g. apache-2.0, llama2, other>\n"
        f"    license_name: <only with license: other, e.g. yi-license>\n"
        f"    license_link: <only with license: other: absolute URL of the licence text>\n"
        f"    source: <where you read it, e.g. https://huggingface.co/{hub_id}/blob/main/README.md>\n"
    )


@dataclass
class Lineage:
    """Who a model descends from, oldest first, and the licence that decides it."""

    stages: list[Stage]  # local stages, newest first (stages[0] is the model itself)
    hub_chain: list[LicenseEntry]  # Hub ancestors from the table, most derived first
    license: LicenseEntry  # the licence the model inherits
    decided_by: str  # which member decided it

    def describe_chain(self) -> list[dict[str, Any]]:
        """Oldest first: Hub ancestors, then our local stages."""
        members = [
            {"name": e.model, "kind": "hub", "license": e.describe(), "url": f"https://huggingface.co/{e.model}"}
            for e in reversed(self.hub_chain)
        ]
        for stage in reversed(self.stages):
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


def resolve_license(model_dir: str | Path, table: dict[str, LicenseEntry] | None = None,
                    table_path: str | Path = LICENSE_TABLE) -> Lineage:
    """The licence ``model_dir`` inherits through every stage of its lineage.

    The rule: walk the local stages (provenance `parent` chain) to the Hub model they started from, then up
    that model's table `parent`s. The licence is that of the most-derived table entry (a derived model's own
    card already reflects its parent). A table entry whose terms differ from its parent's is a conflict and is
    refused unless the entry says why in `supersedes_parent`. A model we created from scratch (provenance
    `license` set) ends the lineage with its own licence. Unknown lineages are refused, never guessed."""
    table_path = Path(table_path)
    table = load_license_table(table_path) if table is None else table
    stages, hub_base = local_stages(model_dir)
    if hub_base is None:  # oldest stage is ours, from scratch
        scratch = stages[-1].provenance
        entry = LicenseEntry(
            model=stages[-1].name, license=scratch["license"], license_name=scratch.get("license_name"),
            license_link=scratch.get("license_link"), url=scratch.get("license_link"),
            source=f"`license` in {stages[-1].where}",
        )
        problem = _license_fields_problem(entry.license, entry.license_name, entry.license_link)
        if problem:
            raise UserError(f"{stages[-1].where}: {problem}.")
        return Lineage(stages, [], entry, decided_by=f"{stages[-1].name} (created from scratch)")
    if hub_base not in table:
        lineage = [s.name for s in stages]
        raise UserError(missing_entry_message(hub_base, lineage, table_path))
    chain = [table[hub_base]]
    while chain[-1].parent is not None:
        if len(chain) > 32 or table[chain[-1].parent] in chain:
            raise UserError(f"{table_path}: the `parent` chain of {hub_base} loops; fix the table.")
        chain.append(table[chain[-1].parent])
    for child, parent in zip(chain, chain[1:]):
        if not child.same_terms(parent) and not child.supersedes_parent:
            raise UserError(
                f"{table_path}: licence conflict in the lineage of {hub_base}: {child.model} says "
                f"{child.describe()!r} but its parent {parent.model} says {parent.describe()!r}. Check both cards; "
                f"if {child.model}'s licence really replaces its parent's, add `supersedes_parent: <why, with a "
                f"link>` to its entry, otherwise correct the entry."
            )
    return Lineage(stages, chain, chain[0], decided_by=chain[0].model)


# ----------------------------------------------------------------------------------------------- evals
def find_eval_summaries(model_dir: str | Path, results_root: Path | None = None) -> list[Path]:
    """summary.json files `smaug eval` wrote for this model folder (every suite)."""
    model_root = paths.eval_dir(str(model_dir), "_", root=results_root).parent
    return sorted(model_root.glob("*/summary.json"))


def load_eval_summary(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read eval summary ({err}); pass a summary.json written by `smaug eval`.") from err
    if not isinstance(data.get("tasks"), dict) or not data["tasks"]:
        raise UserError(f"{path}: field `tasks` is missing or empty; pass a summary.json written by `smaug eval`.")
    for key, task in data["tasks"].items():
        for field_name in ("metric", "value", "num_fewshot", "dataset"):
            if task.get(field_name) is None and field_name != "num_fewshot":
                raise UserError(f"{path}: tasks.{key}.{field_name} is missing.")
        value = task["value"]
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise UserError(f"{path}: tasks.{key}.value is {value!r}; expected a fraction in [0, 1] as lm-eval reports.")
        for ds_field in ("name", "type"):
            if not task["dataset"].get(ds_field):
                raise UserError(f"{path}: tasks.{key}.dataset.{ds_field} is missing.")
    data["_path"] = str(path)
    return data


def eval_results_from_summaries(summaries: list[dict[str, Any]]):
    """EvalResults in the Open LLM Leaderboard's conventions, honestly sourced (a local lm-eval run)."""
    from huggingface_hub import EvalResult

    results, rows, seen = [], [], set()
    for summary in summaries:
        lm_eval_version = (summary.get("versions") or {}).get("lm_eval", "unknown")
        source_name = f"Local lm-evaluation-harness {lm_eval_version} run (smaug eval, suite {summary.get('suite')})"
        source_url = f"https://github.com/EleutherAI/lm-evaluation-harness/tree/v{lm_eval_version}"
        for key, task in summary["tasks"].items():
            ds = task["dataset"]
            ident = (ds["type"], ds.get("config"), ds.get("split"), task["metric"])
            if ident in seen:  # the same task in two suites: keep the first, the card must not disagree with itself
                continue
            seen.add(ident)
            fewshot = task.get("num_fewshot")
            value = round(100.0 * float(task["value"]), 2)
            limited = summary.get("limit") is not None
            stderr = task.get("stderr")
            rows.append({
                "task": task.get("label") or key, "lm_eval_task": task.get("task", key), "dataset": ds["name"],
                "metric": task["metric"] + (f" ({task['filter']})" if task.get("filter") else ""),
                "fewshot": fewshot, "value": f"{value:.2f}",
                "stderr": f"{100.0 * stderr:.2f}" if isinstance(stderr, (int, float)) else "",
                "suite": summary.get("suite"), "dtype": summary.get("dtype"),
                "limit": summary.get("limit"),
            })
            if limited:  # a subsample is not a leaderboard-comparable number: body only, never model-index
                continue
            results.append(
                EvalResult(
                    task_type="text-generation", task_name="Text Generation",
                    dataset_name=ds["name"], dataset_type=ds["type"], dataset_config=ds.get("config"),
                    dataset_split=ds.get("split"), dataset_args={"num_few_shot": fewshot} if fewshot is not None else None,
                    metric_type=task["metric"], metric_value=value, metric_name=METRIC_NAMES.get(task["metric"], task["metric"]),
                    source_name=source_name, source_url=source_url,
                )
            )
    return results, rows


# ----------------------------------------------------------------------------------------------- card
DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt", ".tsv")


def _is_hub_dataset(path: str | None) -> bool:
    """`org/name` that is not a local file: a Hub dataset id (local data files stay out of the metadata)."""
    return bool(path) and looks_like_hub_id(path) and not path.lower().endswith(DATA_FILE_SUFFIXES)


def _recipe_values(recipe: str | None) -> dict[str, Any]:
    """Hyperparameters from the recipe YAML the provenance names (fills keys the provenance lacks)."""
    if not recipe:
        return {}
    path = Path(recipe) if Path(recipe).is_absolute() else paths.REPO_ROOT / recipe
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
            return path.resolve().relative_to(paths.REPO_ROOT).as_posix()
        except ValueError:
            return path.name
    return recipe


def _fmt(key: str, value: Any) -> str:
    if key == "rl":
        return LOSS_NAMES.get(str(value), str(value))
    if value is None:
        return "none" if key == "adapter" else "n/a"
    return str(value)


def _stage_view(stage: Stage) -> dict[str, Any]:
    prov = stage.provenance
    training = {**_recipe_values(prov.get("recipe")), **(prov.get("training") or {})}  # provenance = what ran
    hw = prov.get("hardware") or {}
    hardware = ", ".join(
        str(part) for part in (
            hw.get("device_name") or hw.get("accelerator"),
            f"{hw['num_processes']} process(es)" if hw.get("num_processes") else None,
        ) if part
    )
    return {
        "name": stage.name,
        "recipe": _recipe_display(prov.get("recipe")),
        "base_model": display_name(prov.get("base_model")),
        "base_model_revision": prov.get("base_model_revision"),
        "from_scratch": stage.own_license is not None,
        # Unset keys are left out (adapter: none = full fine-tune is worth saying); each lambda only for its loss.
        "hyperparameters": [(label, _fmt(key, training.get(key))) for label, key in HYPERPARAMETERS
                            if (training.get(key) is not None or (key == "adapter" and key in training))
                            and not (key in ("dpop_lambda", "slic_lambda")
                                     and training.get("rl") != key.removesuffix("_lambda"))],
        "datasets": prov.get("datasets") or [],
        "hardware": hardware or "not recorded",
        "finished_at": prov.get("finished_at"),
    }


def render_card(model_dir: str | Path, eval_summaries: list[str | Path] | None = None, *,
                model_name: str | None = None, auto_evals: bool = True, results_root: Path | None = None,
                table_path: str | Path = LICENSE_TABLE, template_path: str | Path = CARD_TEMPLATE):
    """Build the model card of ``model_dir`` (not written; see `write_card`). Refuses unknown licences."""
    import huggingface_hub
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    lineage = resolve_license(model_dir, table_path=table_path)
    summary_paths = [Path(p) for p in (eval_summaries or [])]
    if auto_evals:
        summary_paths += [p for p in find_eval_summaries(model_dir, results_root) if p not in summary_paths]
    summaries = [load_eval_summary(p) for p in summary_paths]
    eval_results, eval_rows = eval_results_from_summaries(summaries)

    name = model_name or model_dir.resolve().name
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
        model_name=name,
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
    averages = [(s.get("suite"), f"{100.0 * s['average']:.2f}", s.get("limit")) for s in summaries
                if isinstance(s.get("average"), (int, float))]
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_title=name,
        lineage=lineage.describe_chain(),
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
    problem = _license_fields_problem(data.get("license"), data.get("license_name"), data.get("license_link"))
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
        if not re.match(r"^[\w.-]+/[\w.-]+$", b):
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


# ----------------------------------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    parser = subparsers.add_parser("card", help="write the licence-aware model card (README.md) into a model folder")
    parser.add_argument("model_dir", type=Path, help="a trained model folder (holds smaug_provenance.json)")
    parser.add_argument("--eval", dest="evals", action="append", type=Path, default=[], metavar="SUMMARY_JSON",
                        help="a `smaug eval` summary.json to include (repeatable); those in results/eval/ for "
                             "this folder are found automatically")
    parser.add_argument("--no-auto-eval", action="store_true", help="only use the --eval files given")
    parser.add_argument("--name", help="model name on the card (default: the folder name)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    card = render_card(args.model_dir, args.evals, model_name=args.name, auto_evals=not args.no_auto_eval)
    path = write_card(args.model_dir, card)
    data = card.data.to_dict()
    licence = data["license"] + (f" ({data['license_name']})" if data.get("license_name") else "")
    n_results = len(card.data.eval_results or [])
    print(f"wrote {path} (license: {licence}; base_model: {data.get('base_model', 'none')}; {n_results} eval result(s))")
    return 0
