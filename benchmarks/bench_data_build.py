"""Time building the MetaMath pair dataset at the paper's size (~394k pairs) and measuring it, on one core.

Rows come from `smaug.data.synthetic` (MetaMathQA schema, ~300-500-char responses). Two measurements:
  core:        rows in memory -> build_metamath_pairs -> stats (edit distance of every pair)
  end to end:  the `smaug data build` + `smaug data stats` path: JSONL source -> smaug.data.io.read_source ->
               build -> atomic JSONL write -> read back -> stats
Run pinned to one core:  taskset -c 0 .venv/bin/python benchmarks/bench_data_build.py
Target: core <= 60 s for 394k pairs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=394_000, help="pairs to build (paper: ~394k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-end-to-end", action="store_true", help="only time the in-memory build + stats")
    args = parser.parse_args()

    from axolotl_dpop.atomic import write_jsonl
    from smaug.data.builders import build_dataset
    from smaug.data.metamath import build_metamath_pairs
    from smaug.data.stats import stats_for_pairs, stats_for_path
    from smaug.data.synthetic import generate_synthetic_metamath

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"CPU cores available to this process: {cores}")
    # Every synthetic row gives a pair now (one-step rows through the fallback); the 2 % margin is kept so that
    # runs stay comparable with earlier ones (the core step still measures exactly --pairs pairs).
    n_rows = int(args.pairs / 0.98) + 100
    t = time.perf_counter()
    rows = generate_synthetic_metamath(n_rows, seed=args.seed)
    print(f"generated {n_rows:,} synthetic rows in {time.perf_counter() - t:.1f} s (not timed below)")

    # Wall time is what users wait for; CPU time shows how much of it other processes on the core took.
    c0, t0 = time.process_time(), time.perf_counter()
    pairs, skipped = build_metamath_pairs(rows, seed=args.seed)
    t1 = time.perf_counter()
    pairs = pairs[: args.pairs]
    stats = stats_for_pairs(pairs)
    c2, t2 = time.process_time(), time.perf_counter()
    build_s, stats_s = t1 - t0, t2 - t1
    n = len(pairs)
    print(
        f"core: {n:,} pairs built in {build_s:.1f} s ({n / build_s:,.0f} pairs/s; skipped {skipped}), "
        f"stats in {stats_s:.1f} s; total {build_s + stats_s:.1f} s wall ({n / (build_s + stats_s):,.0f} "
        f"pairs/s), {c2 - c0:.1f} s CPU"
    )
    ed = stats["distances"]["char_levenshtein"]["normalised"]
    hamming = stats["distances"]["char_hamming"]["normalised"]
    print(
        f"normalised edit distance: Levenshtein mean {ed['mean']:.2%}, median {ed['median']:.2%}; "
        f"Hamming (the paper's measure) mean {hamming['mean']:.2%}, median {hamming['median']:.2%}"
    )

    if args.no_end_to_end:
        return
    with tempfile.TemporaryDirectory() as tmp:
        # datasets caches an Arrow copy of every file it loads (~600 MB here); keep it in the temp dir.
        os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "hf-datasets-cache")
        src = Path(tmp) / "metamath_source.jsonl"
        write_jsonl(src, rows)
        del rows, pairs
        out = Path(tmp) / "metamath_pairs.jsonl"
        c0, t0 = time.process_time(), time.perf_counter()
        report = build_dataset("metamath", out, source=src, seed=args.seed, progress=False)
        t1 = time.perf_counter()
        file_stats = stats_for_path(out)
        c2, t2 = time.process_time(), time.perf_counter()
        print(
            f"end to end: load + build + write {report.pairs:,} pairs in {t1 - t0:.1f} s, "
            f"read + stats in {t2 - t1:.1f} s; total {t2 - t0:.1f} s wall, {c2 - c0:.1f} s CPU "
            f"({report.pairs / (t2 - t0):,.0f} pairs/s); output {out.stat().st_size / 1e6:.0f} MB, mean "
            f"Hamming distance {file_stats['distances']['char_hamming']['normalised']['mean']:.2%}"
        )


if __name__ == "__main__":
    main()
