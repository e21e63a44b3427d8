"""`smaug data`: build the paper's preference pair datasets, measure them, make synthetic MetaMath rows."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from smaug.common.errors import UserError
from smaug.data.rows import count_bound, whole_count


def whole_number(text: str | None, flag: str, minimum: int) -> int | None:
    """A count given on the command line, as an int >= ``minimum``. Parsed here rather than by argparse `type=`
    so that `nan`, `inf`, `1.5` or `-1` get a one-line error naming the flag (exit 2), like every UserError."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number) or not number.is_integer():
            raise UserError(f"{flag} must be a whole number {count_bound(minimum)}, got {text!r}") from None
        value = int(number)
    return whole_count(value, flag, minimum)


def register(subparsers) -> None:
    from smaug.data.builders import BUILDERS

    data = subparsers.add_parser("data", help="build preference pair datasets and measure their edit distance")
    sub = data.add_subparsers(dest="data_command", required=True)

    names = ",".join(BUILDERS)
    build = sub.add_parser(
        "build",
        help="turn a source dataset into prompt/chosen/rejected pairs",
        description="Builders: "
        + "; ".join(
            f"{b.name} ({b.hub_id}{'/' + b.config if b.config else ''}): {b.description}" for b in BUILDERS.values()
        ),
    )
    # No argparse `choices`: an unknown name must be a UserError that names it (exit 2, no usage dump).
    build.add_argument("builder", metavar=f"{{{names}}}", help="which dataset to build")
    build.add_argument("--out", required=True, help="output file: .jsonl or .parquet (report goes to OUT.build.json)")
    build.add_argument(
        "--source", help="local JSON/JSONL/Parquet file or folder, or a Hub id (default: the builder's Hub dataset)"
    )
    build.add_argument(
        "--source-id",
        metavar="ORG/NAME",
        help="the Hub dataset a local --source is a copy of (the card states its licence)",
    )
    build.add_argument("--config", help="dataset config (default: ARC-Challenge for arc)")
    build.add_argument("--split", help="source split of a folder or Hub source (default: train)")
    build.add_argument("--seed", default="0", help="seed for corruption and few-shot sampling (default: 0)")
    build.add_argument("--few-shot", default="0", metavar="K", help="prepend K solved examples to each prompt")
    build.add_argument("--limit", metavar="N", help="use only the first N source rows")
    build.add_argument(
        "--eval-rows",
        default="0",
        metavar="N",
        help="hold out N source rows (whole groups of rephrasings/questions, drawn with --seed) as an "
        "eval split (the paper's MetaMath set: 1000)",
    )
    build.add_argument("--eval-out", help="where the eval split goes (default: OUT with .eval before the extension)")
    build.add_argument(
        "--intermediate-only",
        action="store_true",
        help="metamath: skip rows with no intermediate result instead of corrupting the final "
        "calculation (or another number); the rule before the released-data check",
    )
    build.add_argument(
        "--format",
        dest="hellaswag_format",
        choices=["raw", "lm-eval"],
        help="hellaswag: raw ctx and endings (default, the paper's pairs) or lm-eval's formatting",
    )
    build.add_argument(
        "--card",
        nargs="?",
        const="",
        metavar="PATH",
        help="also write a dataset card (README.md next to --out, or PATH)",
    )
    build.add_argument(
        "--push-to-hub",
        metavar="ORG/NAME",
        help="also upload the pairs (and the eval split) with their dataset card as this Hub dataset",
    )
    build.add_argument("--private", action="store_true", help="make the pushed Hub dataset private")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_build)

    stats = sub.add_parser("stats", help="pair count, lengths and normalised edit distance of a pair dataset")
    stats.add_argument("path", help="pair file (.jsonl/.parquet) or folder with prompt/chosen/rejected columns")
    stats.add_argument("--json", dest="json_out", help="where to write the stats JSON (default: PATH.stats.json)")
    stats.add_argument(
        "--words",
        action="store_true",
        help="also word-level Levenshtein and Hamming distances (str.split() words; ~10x slower)",
    )
    stats.set_defaults(func=_cmd_stats)

    synth = sub.add_parser("synth-metamath", help="write synthetic MetaMathQA-schema rows (arithmetic word problems)")
    synth.add_argument("--n", required=True, help="number of rows")
    synth.add_argument("--seed", default="0", help="seed (default: 0)")
    synth.add_argument("--out", required=True, help="output .jsonl file")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)


def _cmd_build(args: argparse.Namespace) -> int:
    from smaug.data.builders import build_dataset, report_path

    options = {}
    if args.intermediate_only:
        options["fallback"] = False
    if args.hellaswag_format:
        options["format"] = args.hellaswag_format
    report = build_dataset(
        args.builder,
        args.out,
        source=args.source,
        config=args.config,
        split=args.split,
        seed=whole_number(args.seed, "--seed", 0),
        few_shot=whole_number(args.few_shot, "--few-shot", 0),
        limit=whole_number(args.limit, "--limit", 1),
        push_to_hub=args.push_to_hub,
        private=args.private,
        progress=not args.no_progress,
        options=options,
        eval_rows=whole_number(args.eval_rows, "--eval-rows", 0),
        eval_out=args.eval_out,
        card=args.card is not None and (args.card or True),
        source_id=args.source_id,
    )
    print(
        f"{report['builder']}: {report['rows_read']:,} source rows -> {report['pairs']:,} pairs in {report['output']}"
    )
    if report.get("corrupted"):
        print("corrupted: " + ", ".join(f"{kind} {n:,}" for kind, n in report["corrupted"].items()))
    if report["eval"]:
        ev = report["eval"]
        print(
            f"eval: {ev['rows']:,} held-out rows -> {ev['pairs']:,} pairs in {ev['output']}"
            + (f" ({ev['rows_left_out']} rows of the last group left out of both)" if ev["rows_left_out"] else "")
        )
    if report["skipped"]:
        print(f"skipped {report['skipped_total']:,}:")
        for reason, count in report["skipped"].items():
            print(f"  {reason}: {count:,}")
    if report["card"]:
        print(f"dataset card: {report['card']}")
    if report["pushed_to"]:
        print(f"pushed to https://huggingface.co/datasets/{report['pushed_to']} (with its dataset card)")
    print(f"report: {report_path(args.out)}")
    return 0


def stats_json_path(path: str | Path) -> Path:
    """`PATH.stats.json` next to a pair file or folder."""
    path = Path(str(path).rstrip("/"))
    return path.with_name(path.name + ".stats.json")


def _cmd_stats(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_json
    from smaug.common.files import check_outputs
    from smaug.data.stats import format_stats, stats_for_path

    out = Path(args.json_out) if args.json_out else stats_json_path(args.path)
    check_outputs({"--json": out}, {"the pair file": args.path})
    stats = stats_for_path(args.path, words=args.words)
    write_json(out, stats, sort_keys=True)
    print(format_stats(stats))
    print(f"stats: {out}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from smaug.common.files import check_outputs
    from smaug.data.synthetic import write_synthetic_metamath

    n = whole_number(args.n, "--n", 1)
    seed = whole_number(args.seed, "--seed", 0)
    if Path(args.out).suffix.lower() not in (".jsonl", ".json"):
        raise UserError(f"--out {args.out}: synthetic rows are written as JSON Lines; use a .jsonl file")
    check_outputs({"--out": args.out})
    write_synthetic_metamath(args.out, n, seed, progress=not args.no_progress)
    print(f"wrote {n:,} synthetic MetaMath rows (seed {seed}) to {args.out}")
    return 0
