"""`smaug data`: build the paper's preference pair datasets, measure them, make synthetic MetaMath rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from smaug.common.commands import non_negative_int, positive_int
from smaug.common.errors import UserError


def register(subparsers) -> None:
    group = subparsers.add_parser("data", help="build the paper's preference pair datasets and measure them")
    sub = group.add_subparsers(dest="data_command", required=True)
    _add_build(sub)
    _add_stats(sub)
    _add_synth(sub)


def _add_build(sub) -> None:
    from smaug.data.builders import BUILDERS

    def release(b) -> str:
        how = f"{b.release_eval['rows']:,} held-out rows" if "rows" in b.release_eval else b.release_eval["split"]
        return f"{b.name} ({b.hub_id}{'/' + b.config if b.config else ''}; eval split: {how}): {b.description}"

    parser = sub.add_parser(
        "build",
        help="turn a source dataset into prompt/chosen/rejected pairs",
        description="Builders (without --source, each builds the released set, its eval split included): "
        + "; ".join(release(b) for b in BUILDERS.values()),
    )
    add = parser.add_argument
    # No argparse `choices`: an unknown name is a UserError that names it (exit 2, no usage dump).
    add("builder", metavar="{" + ",".join(BUILDERS) + "}", help="which dataset to build")
    add("--out", required=True, help="output .jsonl or .parquet (report: OUT.build.json)")
    add("--source", help="local JSON/JSONL/Parquet file or folder, or a Hub id (default: the builder's)")
    add("--source-id", metavar="ORG/NAME", help="the Hub dataset a local --source is a copy of (for its licence)")
    add("--config", help="dataset config (default: ARC-Challenge for arc)")
    add("--split", help="source split of a folder or Hub source (default: train)")
    add("--seed", type=non_negative_int, default=0, help="seed of every random choice (default: 0)")
    add("--few-shot", type=non_negative_int, default=0, metavar="K", help="K solved examples before each prompt")
    add("--limit", type=positive_int, metavar="N", help="use only the first N source rows")
    add("--eval-rows", type=non_negative_int, metavar="N", help="hold out N source rows (whole groups) for eval")
    add("--eval-split", metavar="NAME", help="build the eval split from this source split instead")
    add("--eval-out", help="where the eval split goes (default: OUT with .eval before the extension)")
    add("--intermediate-only", action="store_true", help="metamath: skip rows with no intermediate result")
    add("--format", dest="hellaswag_format", choices=["raw", "lm-eval"], help="hellaswag: raw (default) or lm-eval")
    add("--card", nargs="?", const="", metavar="PATH", help="also a dataset card (README.md next to --out, or PATH)")
    add("--push-to-hub", metavar="ORG/NAME", help="also upload the splits with their card to the Hub")
    add("--private", action="store_true", help="make the pushed Hub dataset private")
    add("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_build)


def _add_stats(sub) -> None:
    parser = sub.add_parser("stats", help="pair count, lengths and chosen/rejected distances of a pair dataset")
    parser.add_argument("path", help="pair file (.jsonl/.parquet) or folder with prompt/chosen/rejected columns")
    parser.add_argument("--json", dest="json_out", help="where to write the stats JSON (default: PATH.stats.json)")
    parser.add_argument("--words", action="store_true", help="also word-level distances (~10x slower)")
    parser.set_defaults(func=_stats)


def _add_synth(sub) -> None:
    parser = sub.add_parser("synth-metamath", help="write synthetic MetaMathQA-schema rows (arithmetic word problems)")
    parser.add_argument("--n", type=positive_int, required=True, help="number of rows")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed (default: 0)")
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_synth)


def _build(args: argparse.Namespace) -> int:
    from smaug.data.builders import build_dataset

    options = {"fallback": False} if args.intermediate_only else {}
    if args.hellaswag_format:
        options["format"] = args.hellaswag_format
    names = "source source_id config split seed few_shot limit eval_rows eval_split eval_out push_to_hub private"
    report = build_dataset(
        args.builder,
        args.out,
        options=options,
        card=args.card is not None and (args.card or True),
        progress=not args.no_progress,
        **{name: getattr(args, name) for name in names.split()},
    )
    print(f"{report.builder}: {report.rows_read:,} source rows -> {report.pairs:,} pairs in {report.output}")
    if report.corrupted:
        print("corrupted: " + ", ".join(f"{kind} {n:,}" for kind, n in report.corrupted.items()))
    if ev := report.eval:
        left = f" ({ev.rows_left_out} rows of the last group left out of both)" if ev.rows_left_out else ""
        origin = f"{ev.source_split} split" if ev.source_split else "held-out"
        print(f"eval: {ev.rows:,} {origin} rows -> {ev.pairs:,} pairs in {ev.output}{left}")
    if report.skipped:
        print(f"skipped {report.skipped_total:,}:\n" + "\n".join(f"  {r}: {n:,}" for r, n in report.skipped.items()))
    if report.card:
        print(f"dataset card: {report.card}")
    if report.pushed_to:
        print(f"pushed to https://huggingface.co/datasets/{report.pushed_to} (with its dataset card)")
    print(f"report: {report.output}.build.json")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_json
    from smaug.common.files import check_outputs
    from smaug.data.stats import format_stats, stats_for_path

    path = Path(args.path.rstrip("/"))
    out = Path(args.json_out) if args.json_out else path.with_name(path.name + ".stats.json")
    check_outputs({"--json": out}, {"the pair file": args.path})
    stats = stats_for_path(args.path, words=args.words)
    write_json(out, stats, sort_keys=True)
    print(format_stats(stats) + f"\nstats: {out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from smaug.common.files import check_outputs
    from smaug.data.synthetic import write_synthetic_metamath

    if Path(args.out).suffix.lower() not in (".jsonl", ".json"):
        raise UserError(f"--out {args.out}: synthetic rows are written as JSON Lines; use a .jsonl file")
    check_outputs({"--out": args.out})
    write_synthetic_metamath(args.out, args.n, args.seed, progress=not args.no_progress)
    print(f"wrote {args.n:,} synthetic MetaMath rows (seed {args.seed}) to {args.out}")
    return 0
