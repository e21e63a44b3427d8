"""`smaug eval`: score models with lm-eval suites and MT-Bench; contamination and log-prob analyses."""

from __future__ import annotations

import argparse
from pathlib import Path

from smaug.common.commands import non_negative_int, positive_int
from smaug.common.errors import UserError
from smaug.evaluation.models import BACKENDS, DTYPES, resolve_device

DEFAULT_SUITE = "leaderboard_v1"
DTYPE_HELP = "default: bfloat16 on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX), else float32"


def _batch_size(text: str) -> int | str:
    """lm-eval's batch size: a count, `auto`, or `auto:N` (re-detect N times)."""
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit() and int(text[5:]) >= 1):
        return text
    if text.startswith("auto"):
        raise argparse.ArgumentTypeError(f"{text!r}: after auto: give how many times to re-detect (auto:4)")
    return positive_int(text)


def _limit(text: str) -> int | float:
    """lm-eval's --limit: a whole number of documents per task (an int), or a fraction in (0, 1) (a float)."""
    from smaug.evaluation.harness import whole_or_fraction

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not whole_or_fraction(value):  # float() also reads nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of documents >= 1 or a fraction in (0, 1)")
    return int(value) if value >= 1 else value


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="score one model on a suite; writes results/eval/<model>/<suite>/")
    run.add_argument("model", help="local model folder or Hub id")
    run.add_argument("--suite", default=DEFAULT_SUITE, help=f"see `smaug eval suites` (default {DEFAULT_SUITE})")
    run.add_argument("--batch-size", type=_batch_size, default=8, help="a count, auto or auto:N (default 8)")
    run.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP)
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    run.add_argument("--limit", type=_limit, help="the first N documents per task (or a fraction): not comparable")
    run.add_argument("--revision", help="Hub revision (branch, tag or commit) of a Hub model")
    run.add_argument("--trust-remote-code", action="store_true")
    _add_backend(run)
    run.add_argument("--results-dir", dest="results_root", type=Path, help="default results/, or $SMAUG_RESULTS")
    run.set_defaults(func=_run)


def _add_backend(parser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="hf", help="hf (default) or vllm (GPU nodes)")
    parser.add_argument("--num-gpus", type=positive_int, default=1, help="vLLM's tensor parallelism (default 1)")


def _add_compare(sub) -> None:
    compare = sub.add_parser("compare", help="several models' summaries side by side (Markdown table)")
    compare.add_argument("items", nargs="+", metavar="MODEL_OR_SUMMARY", help="a summary.json, its folder, or a model")
    compare.add_argument("--suite", default=DEFAULT_SUITE, help=f"for models given by name (default {DEFAULT_SUITE})")
    compare.add_argument("--results-dir", dest="results_root", type=Path)
    compare.add_argument("--out", type=Path, help="also write the table to this .md file")
    compare.add_argument(
        "--diff", type=positive_int, metavar="N", help="two runs: the first N differing items per task"
    )
    compare.add_argument("--paper", metavar="NAME", help="beside the paper's result NAME (eval/paper_results.yaml)")
    compare.set_defaults(func=_compare)
    sub.add_parser("suites", help="list the suites and their tasks").set_defaults(func=_suites)


def _tool(sub, name: str, module, help: str):
    """A parser for an analysis tool; they load models the same way (`smaug.evaluation.models`)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser(name, help=help, description=module.__doc__, formatter_class=fmt)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--dtype", choices=DTYPES, help=DTYPE_HELP)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:0, ... (default: cuda if available)")
    parser.add_argument("--out", type=Path, help="output folder")
    return parser


def _add_tools(sub) -> None:
    from smaug.evaluation import contamination, logprobs, mtbench

    parser = _tool(sub, "mtbench", mtbench, "MT-Bench with an explicit chat template and an OpenAI-compatible judge")
    parser.add_argument("--model", required=True)
    parser.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL (…/v1); key from JUDGE_API_KEY")
    parser.add_argument("--judge-model", required=True, help="model name the judge endpoint serves (e.g. gpt-4)")
    parser.add_argument("--config", type=Path, default=mtbench.DEFAULT_CONFIG)
    parser.add_argument("--questions", help="question.jsonl to use instead of the config's")
    parser.add_argument("--limit", type=positive_int, help="only the first N questions")
    parser.add_argument("--trials", type=positive_int, help="override the config's trials")
    parser.add_argument("--max-new-tokens", type=positive_int, help="override the config's max_new_tokens")
    _add_backend(parser)
    parser.set_defaults(func=_mtbench)

    parser = _tool(sub, "contamination", contamination, "contamination score against a reference model (paper Table 3)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--ref", default=contamination.REFERENCE, help=f"default {contamination.REFERENCE} (Llama-7B)")
    parser.add_argument("--benchmarks", nargs="+", choices=list(contamination.BENCHMARKS), help="default: all six")
    parser.add_argument("--data-dir", type=Path, default=contamination.DEFAULT_DATA_DIR, help="benchmark JSONL files")
    parser.add_argument("--hub", action="store_true", help="load benchmark texts from the Hub instead")
    parser.add_argument("--texts", type=Path, help="JSONL with a 'text' field: score these texts instead")
    parser.add_argument("--name", default="texts", help="benchmark name for --texts")
    parser.add_argument("--k", type=float, default=0.2, help="Min-K%% fraction (default 0.2)")
    parser.add_argument("--neighbours", type=non_negative_int, default=100, help="per text; 0 = Min-K%% only")
    parser.add_argument("--max-examples", type=non_negative_int, default=100, help="texts per benchmark (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_contamination)

    parser = _tool(sub, "logprobs", logprobs, "chosen/rejected log-probs against a reference (paper Fig. 4)")
    parser.add_argument("--models", nargs="+", required=True, help="trained model folders or Hub ids")
    parser.add_argument("--reference", required=True, help="reference model (the DPO/DPOP starting point)")
    parser.add_argument(
        "--pairs", type=Path, required=True, help="JSONL or Parquet: prompt, chosen, rejected[, system]"
    )
    parser.add_argument("--format", choices=logprobs.FORMATS, default="chatml", dest="fmt")
    parser.add_argument("--limit", type=positive_int, help="use only the first N pairs")
    parser.add_argument("--max-length", type=positive_int, help="truncate prompt+completion to this many tokens")
    parser.add_argument("--window", type=non_negative_int, default=20, help="positions around the first difference")
    parser.add_argument("--per-token", action="store_true", help="also write every token's log-probs")
    parser.set_defaults(func=_logprobs)

    plot = sub.add_parser("plot-training", help="chosen/rejected log-probs over training steps (paper Fig. 5)")
    plot.add_argument("runs", nargs="+", help="run folder or trainer_state.json, optionally LABEL=PATH")
    plot.add_argument("--out", type=Path, required=True, dest="plot_out", help="PNG to write")
    plot.set_defaults(func=_plot_training)


def register(subparsers) -> None:
    group = subparsers.add_parser("eval", help="score models (lm-eval, MT-Bench), contamination, log-prob analysis")
    sub = group.add_subparsers(dest="eval_command", required=True)
    _add_run(sub)
    _add_compare(sub)
    _add_tools(sub)
    _add_sweep(sub)


def _add_sweep(sub) -> None:
    from smaug.evaluation import logprobs, sweep

    parser = sub.add_parser(
        "sweep", help="score every checkpoint of a chain; the paper's Figures 2-6", description=sweep.__doc__
    )
    parser.add_argument("chain", help="a chain of recipes/chains.yaml")
    each = "[DATASET=]"
    parser.add_argument("--suite", action="append", type=sweep.per_dataset, required=True, metavar=each + "SUITE")
    parser.add_argument("--pairs", action="append", type=sweep.per_dataset, default=[], metavar=each + "FILE")
    parser.add_argument("--max-pairs", type=positive_int, default=sweep.MAX_PAIRS, help="pairs sampled per file")
    parser.add_argument("--format", choices=logprobs.FORMATS, default="chatml", dest="fmt", help="of the pairs")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: bfloat16 where it is fast")
    parser.add_argument("--device", default=None)
    parser.add_argument("--limit", type=_limit, help="the first N documents per task: not comparable")
    parser.add_argument("--output-root", type=Path, help="where the chain wrote (default ./outputs)")
    parser.add_argument("--results-dir", dest="results_root", type=Path)
    parser.add_argument("--out", type=Path, help="default results/figures/CHAIN/")
    parser.set_defaults(func=sweep.run_cli)


def _run(args: argparse.Namespace) -> int:
    from smaug.evaluation.harness import evaluate
    from smaug.evaluation.summary import load_summary, render_summary_md

    names = "dtype batch_size device limit revision results_root trust_remote_code backend num_gpus".split()
    out = evaluate(args.model, args.suite, **{name: getattr(args, name) for name in names})
    summary = load_summary(out / "summary.json")
    print(render_summary_md(summary))
    print(f"wrote {out}/summary.json, summary.md, harness.json and {len(summary.samples or {})} per-sample logs")
    return 0


def find_summary(item: str, suite: str, results_root: Path | None = None) -> Path:
    """A summary.json, a folder holding one, or a model (its results for ``suite``)."""
    from smaug.common.paths import eval_dir

    if results_root is not None and results_root.exists() and not results_root.is_dir():
        raise UserError(f"--results-dir {results_root} is a file; pass the folder `smaug eval run` wrote into")
    path = Path(item).expanduser()
    for candidate in (path, path / "summary.json", eval_dir(item, suite, results_root) / "summary.json"):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"no results for {item!r}: not a summary.json, not a folder with one, and no {candidate}; "
        f"run `smaug eval run {item} --suite {suite}` first"
    )


def _paper_scores(item: str, entry, results_root: Path | None) -> tuple[str, dict[str, float]]:
    """How ``item`` is named and its scores, in the units of the paper's ``entry``."""
    import json

    from smaug.evaluation.summary import load_summary

    if entry.kind == "summary":
        summary = load_summary(find_summary(item, entry.suite, results_root))
        scores = {key: 100 * task.value for key, task in summary.tasks.items()} | {"average": 100 * summary.average}
        return summary.model + (" (--limit)" if summary.limit is not None else ""), scores
    path = Path(item) / f"{entry.kind}.json" if Path(item).is_dir() else Path(item)
    try:
        data = json.loads(path.read_bytes())
        if entry.kind == "mtbench":
            return data["model"], {key: data[key]["mean"] for key in ("turn1", "turn2", "overall")}
        return data["model"], {name: result["score"] for name, result in data["benchmarks"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not the {entry.kind}.json `smaug eval {entry.kind}` writes ({err!r})") from None


def _compare(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_text
    from smaug.common.files import check_outputs
    from smaug.evaluation.suites import load_paper_results
    from smaug.evaluation.summary import compare_table, load_summary, paper_table, sample_diff

    if args.paper:
        results = load_paper_results()
        if args.paper not in results:
            raise UserError(f"--paper {args.paper!r}: not in eval/paper_results.yaml ({', '.join(results)})")
        check_outputs({"--out": args.out})
        entry = results[args.paper]
        table = paper_table(entry, dict(_paper_scores(item, entry, args.results_root) for item in args.items))
    else:
        paths = [find_summary(item, args.suite, args.results_root) for item in args.items]
        check_outputs({"--out": args.out}, dict(zip(args.items, paths)))
        summaries = [load_summary(path) for path in paths]
        table = compare_table(summaries)
        if args.diff and len(paths) != 2:
            raise UserError(f"--diff compares two runs; {len(paths)} were given")
        table += "\n" + sample_diff(paths, summaries, args.diff) if args.diff else ""
    print(table, end="")
    if args.out:
        print(f"wrote {write_text(args.out, table)}")
    return 0


def _suites(args: argparse.Namespace) -> int:
    from smaug.evaluation.suites import load_suites

    for suite in load_suites().values():
        tasks = [
            f"{s.key}={s.task}/{s.metric}{'/' + s.filter if s.filter else ''}@{s.num_fewshot}-shot"
            for s in suite.tasks.values()
        ]
        where = "model cards' model-index" if suite.model_index else "model cards' body table only"
        print(f"{suite.name}: {suite.description} [{where}]\n    {', '.join(tasks)}")
    return 0


def _loading(args: argparse.Namespace, tool: str) -> tuple[Path, dict]:
    """The output folder and how the tool loads models; a typo or a missing GPU fails here, before any loads."""
    from smaug.common.paths import RESULTS_DIR, model_slug

    resolve_device(args.device)
    out = args.out or RESULTS_DIR / tool / model_slug(getattr(args, "model", ""))
    return Path(out), {"batch_size": args.batch_size, "dtype": args.dtype, "device": args.device}


def _mtbench(args: argparse.Namespace) -> int:
    from smaug.common.files import check_outputs
    from smaug.evaluation.mtbench import load_config, run_mtbench

    overrides = {"max_new_tokens": args.max_new_tokens, "trials": args.trials, "questions": args.questions}
    config = load_config(args.config).model_copy(update={k: v for k, v in overrides.items() if v})
    out, loading = _loading(args, "mtbench")
    outputs = {f"--out {name}": out / name for name in ("answers.jsonl", "judgments.jsonl", "mtbench.json")}
    check_outputs(outputs, {"--questions": config.questions, "--config": args.config})
    loading |= dict(config_file=args.config, backend=args.backend, num_gpus=args.num_gpus)
    summary = run_mtbench(args.model, args.judge_url, args.judge_model, config, out, args.limit, **loading)
    n, judge = summary["n_questions"], args.judge_model
    print(f"MT-Bench {args.model} ({n} questions × {summary['trials']} trials, judge {judge})")
    for label, key in (("first turn ", "turn1"), ("second turn", "turn2"), ("overall    ", "overall")):
        mean, std = summary[key]["mean"], summary[key]["std"]
        print(f"  {label} " + ("n/a" if mean is None else f"{mean:.2f} ± {std:.2f}"))
    if summary["failed_judgments"]:
        print(f"  {summary['failed_judgments']} judgment(s) had no [[rating]] and were left out")
    print(f"wrote {out / 'mtbench.json'}")
    return 0


def _contamination(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_json
    from smaug.common.files import check_outputs
    from smaug.evaluation.contamination import BENCHMARKS, load_benchmark_texts, load_texts_file, score_texts

    if not 0 < args.k <= 1:
        raise UserError(f"--k {args.k}: must be a fraction in (0, 1]")
    out, loading = _loading(args, "contamination")
    check_outputs({"--out": out / "contamination.json"}, {"--texts": args.texts})
    if args.texts:
        texts = {args.name: load_texts_file(args.texts)}
    else:
        texts = {name: load_benchmark_texts(name, args.data_dir, args.hub) for name in args.benchmarks or BENCHMARKS}
    options = dict(k=args.k, neighbours=args.neighbours, max_examples=args.max_examples or None, seed=args.seed)
    result = score_texts(args.model, args.ref, texts, **options, **loading)
    print(f"{'benchmark':<12} {'score':>6} {'minK>ref':>9} {'minK model':>11} {'minK ref':>9}")
    for name, e in result["benchmarks"].items():
        score = "n/a" if e["score"] is None else f"{e['score']:.2f}"
        means = f"{e['mink_above_ref']:>9.2f} {e['mink_model_mean']:>11.3f} {e['mink_reference_mean']:>9.3f}"
        print(f"{name:<12} {score:>6} {means}" + ("  <- suggests contamination" if e["suggests_contamination"] else ""))
    print(f"wrote {write_json(out / 'contamination.json', result)}")
    return 0


def _logprobs(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_json
    from smaug.common.files import check_outputs
    from smaug.data.io import load_pairs
    from smaug.evaluation.logprobs import analyse_pairs
    from smaug.evaluation.plots import plot_positional

    if args.out is None:
        raise UserError("smaug eval logprobs needs --out (a folder for logprobs.json and logprobs.png)")
    out, loading = _loading(args, "logprobs")
    check_outputs({f"--out {name}": out / name for name in ("logprobs.json", "logprobs.png")}, {"--pairs": args.pairs})
    options = dict(fmt=args.fmt, max_length=args.max_length, window=args.window, per_token=args.per_token)
    result = analyse_pairs(args.models, args.reference, load_pairs(args.pairs, args.limit), **options, **loading)
    result["pairs_file"] = str(args.pairs)
    json_path, png_path = write_json(out / "logprobs.json", result), plot_positional(result, out / "logprobs.png")
    for model, stats in result["models"].items():
        after = [stats["buckets"][side]["after"]["mean_delta_per_token"] for side in ("chosen", "rejected")]
        print(
            f"{model}: Δchosen {stats['chosen_total_delta_mean']:+.3f}  Δrejected {stats['rejected_total_delta_mean']:+.3f}"
            f"  reward acc {stats['reward_accuracy']:.3f}  Δ/token after first diff: chosen, rejected "
            + ", ".join("n/a" if v is None else f"{v:+.4f}" for v in after)
        )
    print(f"wrote {json_path} and {png_path}")
    return 0


def _plot_training(args: argparse.Namespace) -> int:
    from smaug.common.files import check_outputs
    from smaug.evaluation.plots import find_trainer_state, plot_training

    runs: dict[str, Path] = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        label, path = (label, path) if sep else (Path(spec).name or spec, spec)
        if label in runs:
            raise UserError(f"run label {label!r} given twice; name runs LABEL=PATH")
        runs[label] = find_trainer_state(path)
    check_outputs({"--out": args.plot_out}, runs)
    print(f"wrote {plot_training(runs, args.plot_out)}")
    return 0
