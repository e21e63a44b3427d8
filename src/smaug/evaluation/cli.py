"""`smaug eval`: scoring and analysing models.

smaug eval run MODEL [--suite leaderboard_v1] [--batch-size 8] [--dtype bfloat16] [--limit N]
smaug eval compare MODEL_OR_SUMMARY [...] [--suite leaderboard_v1] [--out table.md]
smaug eval suites
smaug eval mtbench --model M --judge-url URL --judge-model NAME [--config eval/mtbench.yaml]
smaug eval contamination --model M --ref R
smaug eval logprobs --models A B --reference R --pairs PAIRS --out DIR      (paper Fig. 4)
smaug eval plot-training RUN [LABEL=RUN ...] --out fig.png                   (paper Fig. 5)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from smaug.common.commands import non_negative_int, positive_int
from smaug.common.errors import UserError
from smaug.evaluation.models import DTYPES, resolve_device

DEFAULT_SUITE = "leaderboard_v1"


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    if text.startswith("auto:"):  # lm-eval: re-detect the batch size N times
        if not text[5:].isdigit() or int(text[5:]) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: after auto: give how many times to re-detect (auto:4)")
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer or 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError("batch size must be >= 1")
    return value


def _limit(text: str) -> int | float:
    """lm-eval's --limit: a whole number of documents per task, or a fraction in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:  # float() also reads nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of documents >= 1 or a fraction in (0, 1)")
    if value >= 1 and not value.is_integer():
        raise argparse.ArgumentTypeError(
            f"{text!r}: a count of documents must be a whole number (or a fraction below 1)"
        )
    return int(value) if value >= 1 else value  # lm-eval: an int is a count, a float below 1 a fraction


def _add_run(sub):
    from smaug.evaluation.harness import DTYPES as HARNESS_DTYPES

    run = sub.add_parser("run", help="score one model on a suite; writes results/eval/<model>/<suite>/")
    run.add_argument("model", help="local model folder or Hub id")
    run.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        help=f"suite from eval/suites.yaml (default {DEFAULT_SUITE}; `smaug eval suites` lists them)",
    )
    run.add_argument("--batch-size", type=_batch_size, default=8, help="int or 'auto' (default 8)")
    run.add_argument("--dtype", choices=HARNESS_DTYPES, default="bfloat16", help="default bfloat16 (fast on CPU too)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    run.add_argument(
        "--limit",
        type=_limit,
        default=None,
        help="only the first N documents per task (or a fraction < 1): quick checks, not comparable",
    )
    run.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub model")
    run.add_argument("--trust-remote-code", action="store_true")
    run.add_argument(
        "--results-dir", type=Path, default=None, help="root for results (default results/, or $SMAUG_RESULTS)"
    )
    run.set_defaults(func=_run)


def _add_compare(sub):
    compare = sub.add_parser("compare", help="several models' summaries side by side (Markdown table)")
    compare.add_argument(
        "items",
        nargs="+",
        metavar="MODEL_OR_SUMMARY",
        help="a summary.json, its folder, or a model (then its results for --suite are used)",
    )
    compare.add_argument(
        "--suite", default=DEFAULT_SUITE, help=f"suite for models given by name (default {DEFAULT_SUITE})"
    )
    compare.add_argument("--results-dir", type=Path, default=None)
    compare.add_argument("--out", type=Path, default=None, help="also write the table to this .md file")
    compare.set_defaults(func=_compare)


def _add_suites(sub):
    suites = sub.add_parser("suites", help="list the suites and their tasks")
    suites.set_defaults(func=_suites)


def _add_model_loading(parser) -> None:
    """How the analysis tools load a model (`smaug.evaluation.models`)."""
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, ... (default: cuda if available)")


def _add_mtbench(sub):
    from smaug.evaluation import mtbench

    parser = sub.add_parser(
        "mtbench",
        help="MT-Bench with an explicit chat template and an OpenAI-compatible judge",
        description=mtbench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL (…/v1); key from JUDGE_API_KEY")
    parser.add_argument("--judge-model", required=True, help="model name the judge endpoint serves (e.g. gpt-4)")
    parser.add_argument("--config", type=Path, default=mtbench.DEFAULT_CONFIG)
    parser.add_argument("--questions", help="question.jsonl to use instead of the config's")
    parser.add_argument("--limit", type=positive_int, help="only the first N questions")
    parser.add_argument("--trials", type=positive_int, help="override the config's trials")
    parser.add_argument("--max-new-tokens", type=positive_int, help="override the config's max_new_tokens")
    _add_model_loading(parser)
    parser.add_argument("--out", type=Path, help="output folder (default results/mtbench/<model>)")
    parser.set_defaults(func=_mtbench)


def _add_contamination(sub):
    from smaug.evaluation import contamination

    parser = sub.add_parser(
        "contamination",
        help="per-benchmark contamination score of a model against a reference model (paper Table 3)",
        description=contamination.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--ref", required=True, help="reference model (e.g. a base model trained before the benchmark)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(contamination.BENCHMARKS), help="default: all six")
    parser.add_argument(
        "--data-dir", type=Path, default=contamination.DEFAULT_DATA_DIR, help="local benchmark JSONL files"
    )
    parser.add_argument("--hub", action="store_true", help="load benchmark texts from the Hub instead")
    parser.add_argument("--texts", type=Path, help="JSONL with a 'text' field: score these texts instead")
    parser.add_argument("--name", default="texts", help="benchmark name for --texts")
    parser.add_argument("--k", type=float, default=0.2, help="Min-K%% fraction (default 0.2)")
    parser.add_argument(
        "--neighbours",
        type=non_negative_int,
        default=100,
        help="reference-written neighbours per text; 0 = Min-K%% only",
    )
    parser.add_argument(
        "--max-examples", type=non_negative_int, default=100, help="texts sampled per benchmark (0 = all)"
    )
    _add_model_loading(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="output folder (default results/contamination/<model>)")
    parser.set_defaults(func=_contamination)


def _add_logprobs(sub):
    from smaug.evaluation import logprobs

    parser = sub.add_parser(
        "logprobs",
        help="chosen/rejected log-probs vs a reference, by position around the first differing token (paper Fig. 4)",
        description=logprobs.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", help="trained model folders or Hub ids")
    parser.add_argument("--reference", help="reference model (the DPO/DPOP starting point)")
    parser.add_argument("--pairs", type=Path, help="JSONL or Parquet with prompt, chosen, rejected [, system]")
    parser.add_argument("--out", type=Path, help="output folder for logprobs.json and logprobs.png")
    parser.add_argument("--format", choices=logprobs.FORMATS, default="chatml", dest="fmt")
    parser.add_argument(
        "--chat-template", action="store_const", const="chat_template", dest="fmt", help="= --format chat_template"
    )
    _add_model_loading(parser)
    parser.add_argument("--limit", type=positive_int, help="use only the first N pairs")
    parser.add_argument("--max-length", type=positive_int, help="truncate prompt+completion to this many tokens")
    parser.add_argument(
        "--window", type=non_negative_int, default=20, help="positions either side of the first difference to plot"
    )
    parser.add_argument("--per-token", action="store_true", help="also write every token's log-probs")
    parser.set_defaults(func=_logprobs)


def _add_plot_training(sub):
    plot = sub.add_parser("plot-training", help="chosen/rejected log-probs over training steps (paper Fig. 5)")
    plot.add_argument("runs", nargs="+", help="run folder or trainer_state.json, optionally LABEL=PATH")
    plot.add_argument("--out", type=Path, required=True, dest="plot_out", help="PNG to write")
    plot.set_defaults(func=_plot_training)


def register(subparsers) -> None:
    group = subparsers.add_parser(
        "eval",
        help="score models (lm-eval, MT-Bench), contamination, log-prob analysis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = group.add_subparsers(dest="eval_command", required=True)
    _add_run(sub)
    _add_compare(sub)
    _add_suites(sub)
    _add_mtbench(sub)
    _add_contamination(sub)
    _add_logprobs(sub)
    _add_plot_training(sub)


def _run(args: argparse.Namespace) -> int:
    from smaug.evaluation.harness import evaluate
    from smaug.evaluation.summary import load_summary, render_summary_md

    out_dir = evaluate(
        args.model,
        args.suite,
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        revision=args.revision,
        results_root=args.results_dir,
        trust_remote_code=args.trust_remote_code,
    )
    print(render_summary_md(load_summary(out_dir / "summary.json")))
    print(f"wrote {out_dir}/summary.json, summary.md and harness.json")
    return 0


def find_summary(item: str, suite: str, results_root: Path | None = None) -> Path:
    """A summary.json path, a folder holding one, or a model name/path (-> its eval_dir for `suite`)."""
    from smaug.common.paths import eval_dir

    if results_root is not None and results_root.exists() and not results_root.is_dir():
        raise UserError(
            f"--results-dir {results_root} is a file, not a folder; pass the folder `smaug eval run` wrote into"
        )
    path = Path(item).expanduser()
    if path.is_file():
        return path
    if (path / "summary.json").is_file():
        return path / "summary.json"
    candidate = eval_dir(item, suite, results_root) / "summary.json"
    if candidate.is_file():
        return candidate
    raise UserError(
        f"no results for {item!r}: not a summary.json, not a folder with one, and no {candidate}; "
        f"run `smaug eval run {item} --suite {suite}` first"
    )


def _compare(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_text
    from smaug.common.files import check_outputs
    from smaug.evaluation.summary import compare_table, load_summary

    paths = {item: find_summary(item, args.suite, args.results_dir) for item in args.items}
    check_outputs({"--out": args.out}, paths)
    summaries = [load_summary(path) for path in paths.values()]
    table = compare_table(summaries)
    print(table, end="")
    if args.out:
        write_text(args.out, table)
        print(f"wrote {args.out}")
    return 0


def _suites(args: argparse.Namespace) -> int:
    from smaug.evaluation.suites import load_suites

    for suite in load_suites().values():
        tasks = ", ".join(
            f"{s.key}={s.task}/{s.metric}{'/' + s.filter if s.filter else ''}@{s.num_fewshot}-shot" for s in suite.tasks
        )
        where = "model cards' model-index" if suite.model_index else "model cards' body table only"
        print(f"{suite.name}: {suite.description} [{where}]\n    {tasks}")
    return 0


def _mtbench(args: argparse.Namespace) -> int:
    from smaug.common.files import check_outputs
    from smaug.common.paths import RESULTS_DIR, model_slug
    from smaug.evaluation.mtbench import load_config, run_mtbench

    resolve_device(args.device)  # a typo or a missing GPU fails here, before any model loads
    config = load_config(args.config)
    if args.max_new_tokens:
        config["max_new_tokens"] = args.max_new_tokens
    out = args.out or RESULTS_DIR / "mtbench" / model_slug(args.model)
    check_outputs(
        {f"--out {n}": Path(out) / n for n in ("answers.jsonl", "judgments.jsonl", "mtbench.json")},
        {"--questions": args.questions or config["questions"], "--config": args.config},
    )
    summary = run_mtbench(
        args.model,
        args.judge_url,
        args.judge_model,
        config,
        limit=args.limit,
        trials=args.trials,
        questions_file=args.questions,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        out_dir=out,
    )

    def show(stats):
        return "n/a" if stats["mean"] is None else f"{stats['mean']:.2f} ± {stats['std']:.2f}"

    print(
        f"MT-Bench {args.model} ({summary['n_questions']} questions × {summary['trials']} trials, "
        f"judge {args.judge_model})"
    )
    print(f"  first turn  {show(summary['turn1'])}")
    print(f"  second turn {show(summary['turn2'])}")
    print(f"  overall     {show(summary['overall'])}")
    if summary["failed_judgments"]:
        print(f"  {summary['failed_judgments']} judgment(s) had no [[rating]] and were left out")
    print(f"wrote {out / 'mtbench.json'}")
    return 0


def _contamination(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_json
    from smaug.common.files import check_outputs
    from smaug.common.paths import RESULTS_DIR, model_slug
    from smaug.evaluation.contamination import BENCHMARKS, load_benchmark_texts, load_texts_file, score_texts

    resolve_device(args.device)  # a typo or a missing GPU fails here, before any model loads
    if not 0 < args.k <= 1:
        raise UserError(f"--k {args.k}: must be a fraction in (0, 1]")
    out = Path(args.out or RESULTS_DIR / "contamination" / model_slug(args.model)) / "contamination.json"
    check_outputs({"--out": out}, {"--texts": args.texts})
    if args.texts:
        texts = {args.name: load_texts_file(args.texts)}
    else:
        texts = {name: load_benchmark_texts(name, args.data_dir, args.hub) for name in (args.benchmarks or BENCHMARKS)}
    result = score_texts(
        args.model,
        args.ref,
        texts,
        k=args.k,
        neighbours=args.neighbours,
        max_examples=args.max_examples or None,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
    )
    path = write_json(out, result)
    print(f"{'benchmark':<12} {'score':>6} {'minK>ref':>9} {'minK model':>11} {'minK ref':>9}")
    for name, entry in result["benchmarks"].items():
        score = "n/a" if entry["score"] is None else f"{entry['score']:.2f}"
        flag = "  <- suggests contamination" if entry["suggests_contamination"] else ""
        print(
            f"{name:<12} {score:>6} {entry['mink_above_ref']:>9.2f} {entry['mink_model_mean']:>11.3f} "
            f"{entry['mink_reference_mean']:>9.3f}{flag}"
        )
    print(f"wrote {path}")
    return 0


def _logprobs(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_json
    from smaug.common.files import check_outputs
    from smaug.data.io import load_pairs
    from smaug.evaluation.logprobs import analyse_pairs
    from smaug.evaluation.plots import plot_positional

    resolve_device(args.device)  # a typo or a missing GPU fails here, before any model loads
    missing = [
        flag
        for flag, value in (
            ("--models", args.models),
            ("--reference", args.reference),
            ("--pairs", args.pairs),
            ("--out", args.out),
        )
        if not value
    ]
    if missing:
        raise UserError(f"smaug eval logprobs needs {', '.join(missing)} (or use `smaug eval plot-training`)")
    check_outputs(
        {"--out logprobs.json": args.out / "logprobs.json", "--out logprobs.png": args.out / "logprobs.png"},
        {"--pairs": args.pairs},
    )
    pairs = load_pairs(args.pairs, args.limit)
    result = analyse_pairs(
        args.models,
        args.reference,
        pairs,
        fmt=args.fmt,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        max_length=args.max_length,
        window=args.window,
        per_token=args.per_token,
    )
    result["pairs_file"] = str(args.pairs)
    json_path = write_json(args.out / "logprobs.json", result)
    png_path = plot_positional(result, args.out / "logprobs.png")
    for model, stats in result["models"].items():
        b = stats["buckets"]
        print(
            f"{model}: Δchosen {stats['chosen_total_delta_mean']:+.3f}  Δrejected {stats['rejected_total_delta_mean']:+.3f}"
            f"  reward acc {stats['reward_accuracy']:.3f}  Δ/token after first diff: chosen "
            f"{_fmt(b['chosen']['after']['mean_delta_per_token'])} rejected {_fmt(b['rejected']['after']['mean_delta_per_token'])}"
        )
    print(f"wrote {json_path} and {png_path}")
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def parse_runs(specs: list[str]) -> dict[str, str]:
    runs: dict[str, str] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).name or spec, spec
        if label in runs:
            raise UserError(f"run label {label!r} given twice; name runs LABEL=PATH")
        runs[label] = path
    return runs


def _plot_training(args: argparse.Namespace) -> int:
    from smaug.common.files import check_outputs
    from smaug.evaluation.plots import find_trainer_state, plot_training

    runs = {label: find_trainer_state(run) for label, run in parse_runs(args.runs).items()}
    check_outputs({"--out": args.plot_out}, runs)
    out = plot_training(runs, args.plot_out)
    print(f"wrote {out}")
    return 0
