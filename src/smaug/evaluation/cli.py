"""`smaug eval`: score models with lm-evaluation-harness and compare them.

    smaug eval run MODEL [--suite leaderboard_v1] [--batch-size 8] [--dtype bfloat16] [--limit N]
    smaug eval compare MODEL_OR_SUMMARY [...] [--suite leaderboard_v1] [--out table.md]
    smaug eval suites
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smaug.errors import UserError

DEFAULT_SUITE = "leaderboard_v1"


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer or 'auto'") from None
    if value < 1:
        raise argparse.ArgumentTypeError("batch size must be >= 1")
    return value


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("limit must be > 0")
    return int(value) if value >= 1 else value  # lm-eval: an int is a count, a float below 1 a fraction


def register(subparsers) -> None:
    from smaug.evaluation.harness import DTYPES

    parser = subparsers.add_parser("eval", help="evaluate models with lm-evaluation-harness (Open LLM Leaderboard v1)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="eval_command", required=True)

    run = sub.add_parser("run", help="score one model on a suite; writes results/eval/<model>/<suite>/")
    run.add_argument("model", help="local model folder or Hub id")
    run.add_argument("--suite", default=DEFAULT_SUITE, help=f"suite from eval/suites.yaml (default {DEFAULT_SUITE}; "
                     "`smaug eval suites` lists them)")
    run.add_argument("--batch-size", type=_batch_size, default=8, help="int or 'auto' (default 8)")
    run.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="default bfloat16 (fast on CPU too)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:0, ... (default: cuda if available, else cpu)")
    run.add_argument("--limit", type=_limit, default=None,
                     help="only the first N documents per task (or a fraction < 1): quick checks, not comparable")
    run.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub model")
    run.add_argument("--trust-remote-code", action="store_true")
    run.add_argument("--results-dir", type=Path, default=None,
                     help="root for results (default results/, or $SMAUG_RESULTS)")
    run.set_defaults(func=_run)

    compare = sub.add_parser("compare", help="several models' summaries side by side (Markdown table)")
    compare.add_argument("items", nargs="+", metavar="MODEL_OR_SUMMARY",
                         help="a summary.json, its folder, or a model (then its results for --suite are used)")
    compare.add_argument("--suite", default=DEFAULT_SUITE,
                         help=f"suite for models given by name (default {DEFAULT_SUITE})")
    compare.add_argument("--results-dir", type=Path, default=None)
    compare.add_argument("--out", type=Path, default=None, help="also write the table to this .md file")
    compare.set_defaults(func=_compare)

    suites = sub.add_parser("suites", help="list the suites and their tasks")
    suites.set_defaults(func=_suites)


def _run(args: argparse.Namespace) -> int:
    from smaug.evaluation.harness import evaluate
    from smaug.evaluation.summary import load_summary, render_summary_md

    out_dir = evaluate(args.model, args.suite, dtype=args.dtype, batch_size=args.batch_size, device=args.device,
                       limit=args.limit, revision=args.revision, results_root=args.results_dir,
                       trust_remote_code=args.trust_remote_code)
    print(render_summary_md(load_summary(out_dir / "summary.json")))
    print(f"wrote {out_dir}/summary.json, summary.md and harness.json")
    return 0


def find_summary(item: str, suite: str, results_root: Path | None = None) -> Path:
    """A summary.json path, a folder holding one, or a model name/path (-> its eval_dir for `suite`)."""
    from smaug.paths import eval_dir

    path = Path(item).expanduser()
    if path.is_file():
        return path
    if (path / "summary.json").is_file():
        return path / "summary.json"
    candidate = eval_dir(item, suite, results_root) / "summary.json"
    if candidate.is_file():
        return candidate
    raise UserError(f"no results for {item!r}: not a summary.json, not a folder with one, and no {candidate}; "
                    f"run `smaug eval run {item} --suite {suite}` first")


def _compare(args: argparse.Namespace) -> int:
    from smaug.atomic import write_text_atomic
    from smaug.evaluation.summary import compare_table, load_summary

    summaries = [load_summary(find_summary(item, args.suite, args.results_dir)) for item in args.items]
    table = compare_table(summaries)
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)
        print(f"wrote {args.out}")
    return 0


def _suites(args: argparse.Namespace) -> int:
    from smaug.evaluation.suites import load_suites

    for suite in load_suites().values():
        tasks = ", ".join(f"{s.key}={s.task}/{s.metric}{'/' + s.filter if s.filter else ''}@{s.num_fewshot}-shot"
                          for s in suite.tasks)
        print(f"{suite.name}: {suite.description}\n    {tasks}")
    return 0
