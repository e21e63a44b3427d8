"""Statistics of a pair dataset, above all the normalised edit distance between chosen and rejected.

normalised edit distance of a pair = character-level Levenshtein distance (insertions, deletions and
substitutions all cost 1) between chosen and rejected / the length of the longer of the two (0 when both are
empty). It is 0 for identical completions and 1 for completely different ones; the paper's claim is that DPO
fails when it is small (MetaMath pairs) and not when it is large (ARC, HellaSwag).

`distances` adds the other measures (`MEASURES`): the position-by-position (Hamming) distance over characters,
the shorter text padded, which is the one that reproduces the paper's "edit (Hamming) distance" figures
(`PAPER_MEASURE`), and word-level Levenshtein and Hamming distances.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smaug.common.errors import UserError

DEFINITION = "Levenshtein(chosen, rejected) / max(len(chosen), len(rejected)), characters, all edits cost 1"

# name -> (unit, metric, definition). Every distance is divided by the longer text's length in its unit.
MEASURES = {
    "char_levenshtein": ("chars", "levenshtein", DEFINITION),
    "char_hamming": (
        "chars",
        "hamming",
        "positions i < max(len) where chosen[i] != rejected[i], the shorter padded, "
        "/ max(len(chosen), len(rejected)), characters",
    ),
    "word_levenshtein": (
        "words",
        "levenshtein",
        "Levenshtein over words (str.split(): runs of whitespace separate words) / the longer word count",
    ),
    "word_hamming": (
        "words",
        "hamming",
        "position-by-position word mismatches, the shorter padded, / the longer word count (words: str.split())",
    ),
}
# A corrupted number that changes width ($47 -> $152) shifts every later character, so the positional count
# grows with what follows the change: ~5 % on MetaMath-style pairs, ~85-95 % on ARC's, as the paper reports
# (~6.5 % and ~90 %, "edit (Hamming) distance"); Levenshtein gives 0.4 % and ~68 % on the same pairs.
PAPER_MEASURE = "char_hamming"


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def edit_distances(
    chosen: Sequence[Sequence], rejected: Sequence[Sequence], metric: str = "levenshtein"
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, normalised distances) for each pair, computed in one batched rapidfuzz call.

    ``metric`` is `levenshtein` or `hamming` (position by position, the shorter padded: a length difference
    counts once per missing position). The items may be strings (characters) or lists of words."""
    from rapidfuzz.distance import Hamming, Levenshtein
    from rapidfuzz.process import cpdist

    if len(chosen) != len(rejected):
        raise ValueError("chosen and rejected must have the same length")
    if not len(chosen):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if metric == "levenshtein":
        dist = cpdist(chosen, rejected, scorer=Levenshtein.distance, workers=1)
    elif metric == "hamming":
        dist = cpdist(chosen, rejected, scorer=Hamming.distance, scorer_kwargs={"pad": True}, workers=1)
    else:
        raise ValueError(f"unknown metric {metric!r}; use levenshtein or hamming")
    dist = np.asarray(dist, dtype=np.int64)
    longer = np.maximum(
        np.fromiter(map(len, chosen), dtype=np.int64, count=len(chosen)),
        np.fromiter(map(len, rejected), dtype=np.int64, count=len(rejected)),
    )
    normalised = np.divide(dist, longer, out=np.zeros(len(dist)), where=longer > 0)
    return dist, normalised


def _word_distances(
    chosen: Sequence[str], rejected: Sequence[str], metric: str, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """`edit_distances` over `str.split()` words, a chunk of pairs at a time: the word lists of 400k pairs at
    once are tens of millions of small objects (gigabytes, and the garbage collector's time)."""
    parts = [
        edit_distances([t.split() for t in chosen[i : i + chunk]], [t.split() for t in rejected[i : i + chunk]], metric)
        for i in range(0, len(chosen), chunk)
    ]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate([d for d, _ in parts]), np.concatenate([n for _, n in parts])


def distance_stats(chosen: Sequence[str], rejected: Sequence[str], words: bool = False) -> dict[str, dict[str, Any]]:
    """The character measures of `MEASURES` (and the word ones with ``words``; they cost ~10x the character
    ones): definition and mean/median/min/max of the normalised and raw distances over pairs, with
    `matches_paper` on the one that reproduces the paper's figures."""
    out = {}
    for name, (unit, metric, definition) in MEASURES.items():
        if unit == "words" and not words:
            continue
        if unit == "chars":
            dist, normalised = edit_distances(chosen, rejected, metric)
        else:
            dist, normalised = _word_distances(chosen, rejected, metric)
        out[name] = {
            "definition": definition,
            "unit": unit,
            "matches_paper": name == PAPER_MEASURE,
            "normalised": _summary(normalised),
            "raw": _summary(dist.astype(np.float64)),
        }
    return out


def compute_stats(
    prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], words: bool = False
) -> dict[str, Any]:
    """Pair count, character lengths (mean/median/min/max) of each column and the edit distances (the
    word-level ones too with ``words``)."""
    n = len(prompts)
    if n == 0:
        raise UserError("the dataset has no pairs; nothing to measure")
    if not (len(chosen) == len(rejected) == n):
        raise ValueError("prompt, chosen and rejected must have the same length")
    lengths = {
        name: _summary(np.fromiter(map(len, column), dtype=np.int64, count=n))
        for name, column in (("prompt", prompts), ("chosen", chosen), ("rejected", rejected))
    }
    distances = distance_stats(chosen, rejected, words)
    levenshtein = distances["char_levenshtein"]
    return {
        "pairs": n,
        "length_chars": lengths,
        # Kept as it was (character Levenshtein) for whoever reads these keys; all measures are in `distances`.
        "edit_distance": {
            "definition": DEFINITION,
            "normalised": levenshtein["normalised"],
            "levenshtein": levenshtein["raw"],
        },
        "distances": distances,
        "paper_measure": PAPER_MEASURE,
        "identical_pairs": int(sum(c == r for c, r in zip(chosen, rejected))),
    }


def stats_for_pairs(pairs: Sequence[dict[str, str]], words: bool = False) -> dict[str, Any]:
    """`compute_stats` on a list of {prompt, chosen, rejected} dicts (what the builders return)."""
    return compute_stats(
        [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], [p["rejected"] for p in pairs], words
    )


def stats_for_path(path: str | Path, words: bool = False) -> dict[str, Any]:
    """`compute_stats` on a pair file or folder (JSONL/Parquet with prompt/chosen/rejected columns)."""
    from smaug.data.io import load_pairs

    return {"path": str(path), **stats_for_pairs(load_pairs(path), words)}


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
    if "distances" in stats:
        lines.append("normalised distance        mean   median   (raw mean)")
        for name, d in stats["distances"].items():
            mark = '   <- the paper\'s "edit (Hamming) distance"' if d["matches_paper"] else ""
            lines.append(
                f"  {name:<18} {d['normalised']['mean']:>7.2%} {d['normalised']['median']:>8.2%} "
                f"  ({d['raw']['mean']:.1f} {d['unit']}){mark}"
            )
    lines.append(f"identical chosen/rejected pairs: {stats['identical_pairs']}")
    return "\n".join(lines)
