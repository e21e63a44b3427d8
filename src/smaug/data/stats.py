"""Statistics of a pair dataset, above all the distance between chosen and rejected, each measure divided by the
longer text's length in its unit (0 for identical completions, 1 for completely different ones).

The paper reports ~6.5 % (MetaMath) and ~90 % (ARC) "edit (Hamming) distance" without defining it. That it is the
character Hamming distance (`PAPER_MEASURE`) is our inference: it is the measure whose values match the paper's in
size, because a corrupted number that changes width ($47 -> $152) shifts every later character; on our synthetic
MetaMath pairs it gives 4.7-4.9 %, not 6.5 %, and character Levenshtein 0.4 %."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smaug.common.errors import UserError

# name -> (unit, metric, definition)
MEASURES = {
    "char_levenshtein": (
        "chars",
        "levenshtein",
        "Levenshtein(chosen, rejected) / max(len(chosen), len(rejected)), characters, all edits cost 1",
    ),
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
    """(distances, normalised distances) of each pair, in one batched rapidfuzz call. ``metric``: `levenshtein`
    or `hamming` (the shorter padded). Items are strings (characters) or lists of words."""
    from rapidfuzz.distance import Hamming, Levenshtein
    from rapidfuzz.process import cpdist

    if not len(chosen):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    scorer = {"levenshtein": (Levenshtein.distance, None), "hamming": (Hamming.distance, {"pad": True})}[metric]
    dist = np.asarray(cpdist(chosen, rejected, scorer=scorer[0], scorer_kwargs=scorer[1], workers=1), dtype=np.int64)
    longer = np.maximum(np.fromiter(map(len, chosen), np.int64), np.fromiter(map(len, rejected), np.int64))
    return dist, np.divide(dist, longer, out=np.zeros(len(dist)), where=longer > 0)


def distance_stats(chosen: Sequence[str], rejected: Sequence[str], words: bool = False) -> dict[str, dict[str, Any]]:
    """Each measure's definition and the mean/median/min/max of its normalised and raw distances; the word
    measures (``words``) cost ~10x the character ones, so they go a chunk of pairs at a time."""
    out = {}
    for name, (unit, metric, definition) in MEASURES.items():
        if unit == "words" and not words:
            continue
        if unit == "chars":
            dist, normalised = edit_distances(chosen, rejected, metric)
        else:  # the word lists of 400k pairs at once would be tens of millions of small objects
            parts = [
                edit_distances(
                    [t.split() for t in chosen[i : i + 8192]], [t.split() for t in rejected[i : i + 8192]], metric
                )
                for i in range(0, len(chosen), 8192)
            ]
            dist, normalised = (np.concatenate(column) for column in zip(*parts))
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
    """Pair count, character lengths of each column, identical pairs and the distances (`distance_stats`)."""
    if not prompts:
        raise UserError("the dataset has no pairs; nothing to measure")
    columns = {"prompt": prompts, "chosen": chosen, "rejected": rejected}
    return {
        "pairs": len(prompts),
        "length_chars": {name: _summary(np.fromiter(map(len, column), np.int64)) for name, column in columns.items()},
        "distances": distance_stats(chosen, rejected, words),
        "paper_measure": PAPER_MEASURE,
        "identical_pairs": sum(c == r for c, r in zip(chosen, rejected)),
    }


def stats_for_pairs(pairs: Sequence[dict[str, str]], words: bool = False) -> dict[str, Any]:
    return compute_stats(*([p[c] for p in pairs] for c in ("prompt", "chosen", "rejected")), words)


def stats_for_path(path: str | Path, words: bool = False) -> dict[str, Any]:
    from smaug.data.io import load_pairs

    return {"path": str(path), **stats_for_pairs(load_pairs(path), words)}


def format_stats(stats: dict[str, Any]) -> str:
    lines = [
        f"dataset: {stats['path']}",
        f"pairs: {stats['pairs']:,}",
        "length (chars)     mean   median      min      max",
    ]
    for name, s in stats["length_chars"].items():
        lines.append(f"  {name:<10} {s['mean']:>10.1f} {s['median']:>8.1f} {s['min']:>8.0f} {s['max']:>8.0f}")
    lines.append("normalised distance        mean   median   (raw mean)")
    for name, d in stats["distances"].items():
        mark = '   <- the paper\'s "edit (Hamming) distance" (our inference)' if d["matches_paper"] else ""
        lines.append(
            f"  {name:<18} {d['normalised']['mean']:>7.2%} {d['normalised']['median']:>8.2%}"
            f"   ({d['raw']['mean']:.1f} {d['unit']}){mark}"
        )
    lines.append(f"identical chosen/rejected pairs: {stats['identical_pairs']}")
    return "\n".join(lines)
