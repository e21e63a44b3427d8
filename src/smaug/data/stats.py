"""Statistics of a pair dataset, above all the normalised edit distance between chosen and rejected.

normalised edit distance of a pair = character-level Levenshtein distance (insertions, deletions and
substitutions all cost 1) between chosen and rejected / the length of the longer of the two (0 when both are
empty). It is 0 for identical completions and 1 for completely different ones; the paper's claim is that DPO
fails when it is small (MetaMath pairs) and not when it is large (ARC, HellaSwag).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smaug.common.errors import UserError

DEFINITION = "Levenshtein(chosen, rejected) / max(len(chosen), len(rejected)), characters, all edits cost 1"


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def edit_distances(chosen: Sequence[str], rejected: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(Levenshtein distances, normalised distances) for each pair, computed in one batched rapidfuzz call."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cpdist

    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected must have the same length")
    if not len(chosen):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    dist = np.asarray(cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=1), dtype=np.int64)
    longer = np.maximum(
        np.fromiter(map(len, chosen), dtype=np.int64, count=len(chosen)),
        np.fromiter(map(len, rejected), dtype=np.int64, count=len(rejected)),
    )
    normalised = np.divide(dist, longer, out=np.zeros(len(dist)), where=longer > 0)
    return dist, normalised


def compute_stats(prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str]) -> dict[str, Any]:
    """Pair count, character lengths (mean/median/min/max) of each column and the edit distances."""
    n = len(prompts)
    if n == 0:
        raise UserError("the dataset has no pairs; nothing to measure")
    if not (len(chosen) == len(rejected) == n):
        raise ValueError("prompt, chosen and rejected must have the same length")
    lengths = {
        name: _summary(np.fromiter(map(len, column), dtype=np.int64, count=n))
        for name, column in (("prompt", prompts), ("chosen", chosen), ("rejected", rejected))
    }
    dist, normalised = edit_distances(chosen, rejected)
    return {
        "pairs": n,
        "length_chars": lengths,
        "edit_distance": {
            "definition": DEFINITION,
            "normalised": _summary(normalised),
            "levenshtein": _summary(dist.astype(np.float64)),
        },
        "identical_pairs": int((dist == 0).sum()),
    }


def stats_for_pairs(pairs: Sequence[dict[str, str]]) -> dict[str, Any]:
    """`compute_stats` on a list of {prompt, chosen, rejected} dicts (what the builders return)."""
    return compute_stats([p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs])


def stats_for_path(path: str | Path) -> dict[str, Any]:
    """`compute_stats` on a pair file or folder (JSONL/Parquet with prompt/chosen/rejected columns)."""
    from smaug.data.io import load_pairs

    return {"path": str(path), **stats_for_pairs(load_pairs(path))}


def format_stats(stats: dict[str, Any]) -> str:
    """A short human-readable table of ``stats``."""
    lines = [f"pairs: {stats['pairs']:,}"]
    if "path" in stats:
        lines.insert(0, f"dataset: {stats['path']}")
    lines.append("length (chars)     mean   median      min      max")
    for name, s in stats["length_chars"].items():
        lines.append(f"  {name:<10} {s['mean']:>10.1f} {s['median']:>8.1f} {s['min']:>8.0f} {s['max']:>8.0f}")
    ed = stats["edit_distance"]
    norm, lev = ed["normalised"], ed["levenshtein"]
    lines.append(
        f"normalised edit distance: mean {norm['mean']:.2%}, median {norm['median']:.2%} "
        f"(min {norm['min']:.2%}, max {norm['max']:.2%})"
    )
    lines.append(f"levenshtein distance (chars): mean {lev['mean']:.1f}, median {lev['median']:.1f}")
    lines.append(f"identical chosen/rejected pairs: {stats['identical_pairs']}")
    return "\n".join(lines)
