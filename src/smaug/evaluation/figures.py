"""The paper's Figures 2-6 from a sweep's points (`smaug.evaluation.sweep`), the same code for every chain: one PNG
and one CSV of the numbers drawn per figure, and a Markdown table of each run's first and last point. Runs that
differ only in their seed are one line: the mean, with a band of ± one standard deviation."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from axolotl_dpop.atomic import write_text
from smaug.evaluation.plots import new_figure, save_png, shifted

PAPER = {"beta": 0.3, "lambda": 50}  # Figures 2, 4, 5 and 6 compare the losses at the paper's β and λ
CHOSEN, REJECTED = "chosen_logp_total_mean", "rejected_logp_total_mean"
# panel -> line -> [(x, mean, std, runs)]
Series = dict[str, dict[str, list[tuple[float, float, float, int]]]]


def _paper(p: dict) -> bool:
    return p["beta"] == PAPER["beta"] and p["lambda"] in (None, PAPER["lambda"])


def _label(p: dict) -> str:
    """The loss, with β and λ where they are not the paper's."""
    settings = [f"β={p['beta']:g}" if p["beta"] not in (None, PAPER["beta"]) else ""]
    settings.append(f"λ={p['lambda']:g}" if p["lambda"] not in (None, PAPER["lambda"]) else "")
    return " ".join([p["loss"], *filter(None, settings)])


def _aggregate(items: Iterable[tuple[str, str, float, float]]) -> Series:
    """(panel, line, x, value) items -> the mean and standard deviation over the runs at each x."""
    found: dict[tuple[str, str], dict[float, list[float]]] = {}
    for panel, line, x, value in items:
        found.setdefault((panel, line), {}).setdefault(x, []).append(value)
    series: Series = {}
    for (panel, line), by_x in sorted(found.items()):
        stats = [(x, fmean(v), stdev(v) if len(v) > 1 else 0.0, len(v)) for x, v in sorted(by_x.items())]
        series.setdefault(panel, {})[line] = stats
    return series


def _draw(out: Path, name: str, title: str, series: Series, ylabel: str, xlabel: str = "training step") -> list[Path]:
    """``name``.png (one panel per key of ``series``) and ``name``.csv; nothing when there is nothing to draw."""
    if not series:
        return []
    plt, fig, axes, colours = new_figure(len(series))
    kinds = (" chosen", " rejected")
    bases = sorted({line.removesuffix(kinds[0]).removesuffix(kinds[1]) for lines in series.values() for line in lines})
    rows: list[list[Any]] = [["panel", "line", xlabel, "mean", "std", "runs"]]
    for ax, (panel, lines) in zip(axes, series.items()):
        for line, values in lines.items():
            colour = colours[bases.index(line.removesuffix(kinds[0]).removesuffix(kinds[1])) % len(colours)]
            x, mean, std, runs = zip(*values)
            style = "--" if line.endswith(("rejected", "reference")) else "-"
            ax.plot(x, mean, style, marker="o", markersize=3, color=colour, label=line)
            if max(runs) > 1:
                low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
                ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
            rows += [[panel, line, *value] for value in values]
        ax.set(title=panel, xlabel=xlabel, ylabel=ylabel)
        ax.legend(fontsize=8)
    fig.suptitle(title, y=1.03)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return [save_png(plt, fig, out / f"{name}.png"), write_text(out / f"{name}.csv", text.getvalue())]


def _runs(points: list[dict]) -> dict[str, list[dict]]:
    """Each stage's points, by step."""
    runs: dict[str, list[dict]] = {}
    for p in sorted(points, key=lambda p: p["step"]):
        runs.setdefault(p["stage"], []).append(p)
    return runs


def _swept(points: list[dict], key: str) -> list[dict]:
    """The points of the datasets where ``key`` takes more than one value."""
    values: dict[str, set] = {}
    for p in points:
        values.setdefault(p["dataset"], set()).add(p[key])
    return [p for p in points if len(values[p["dataset"]]) > 1]


def draw_figures(result: dict[str, Any], out: Path) -> list[Path]:
    """Every figure the sweep's points allow (Figure 3 needs a sweep of β or λ; Figures 4-6 need held-out pairs),
    and table.md."""
    runs = [run for run in _runs(result["points"]).values() if run[0]["loss"] != "SFT"]
    points = [p for run in runs for p in run]
    paper = [p for p in points if _paper(p)]
    logps = [p for p in paper if CHOSEN in p]
    betas = [p for p in points if p["loss"] in ("DPO", "DPOP") and p["lambda"] in (None, PAPER["lambda"])]
    lambdas = [p for p in points if p["loss"] == "DPOP" and p["beta"] == PAPER["beta"]]
    sweeps = [
        (f"β, {p['dataset']}", f"{p['loss']} β={p['beta']:g}", p["step"], p["score"]) for p in _swept(betas, "beta")
    ]
    sweeps += [
        (f"λ, {p['dataset']}", f"DPOP λ={p['lambda']:g}", p["step"], p["score"]) for p in _swept(lambdas, "lambda")
    ]
    ends = [p for run in runs for p in [run[0], *run[1:][-1:]] if _paper(p) and "positional_logp" in p]
    positional = [
        (p["dataset"], p["loss"] if p["step"] else "reference", x, y)
        for p in ends
        for x, y in zip(*shifted(p["positional_logp"]["chosen"]))
    ]
    sides = [
        (p["dataset"], f"{p['loss']} {side}", p["step"], p[key])
        for p in logps
        for side, key in (("chosen", CHOSEN), ("rejected", REJECTED))
    ]
    score, logp = f"score ({', '.join(sorted(set(result['suites'].values())))})", "average log-prob"
    step, position = "training step", "token position relative to the first differing token"
    figures = [
        (
            "figure2",
            "Figure 2: score during training",
            [(p["dataset"], p["loss"], p["step"], p["score"]) for p in paper],
            score,
            step,
        ),
        ("figure3", "Figure 3: β and λ sweeps", sweeps, score, step),
        (
            "figure4_left",
            "Figure 4 (left): held-out preferred completions",
            [(p["dataset"], p["loss"], p["step"], p[CHOSEN]) for p in logps],
            logp,
            step,
        ),
        (
            "figure4_right",
            "Figure 4 (right): preferred completions after training",
            positional,
            f"{logp}, 0 at -1",
            position,
        ),
        ("figure5_6", "Figures 5-6: held-out log-probs during training", sides, logp, step),
    ]
    written = [
        path for name, title, items, y, x in figures for path in _draw(out, name, title, _aggregate(items), y, x)
    ]
    return [*written, write_text(out / "table.md", final_table(result["points"]))]


def _mean_std(values: list[float | None], scale: float = 1.0, digits: int = 1) -> str:
    if any(v is None for v in values) or not values:
        return "–"
    mean = fmean(v * scale for v in values)
    spread = f" ± {stdev(v * scale for v in values):.{digits}f}" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{spread}"


def final_table(points: list[dict]) -> str:
    """Per dataset and run (seeds together): score x100 and held-out chosen log-prob, at step 0 and at the end."""
    groups: dict[tuple[str, str], list[list[dict]]] = {}
    for run in _runs(points).values():
        groups.setdefault((run[0]["dataset"], _label(run[0])), []).append(run)
    lines = [
        "| dataset | run | seeds | steps | score, step 0 | score, end | chosen log-prob, step 0 | chosen log-prob, end |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (dataset, label), group in groups.items():
        first, last = [run[0] for run in group], [run[-1] for run in group]
        cells = [_mean_std([p["score"] for p in ps], 100) for ps in (first, last)]
        cells += [_mean_std([p.get(CHOSEN) for p in ps], digits=2) for ps in (first, last)]
        lines.append(f"| {dataset} | {label} | {len(group)} | {last[0]['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
