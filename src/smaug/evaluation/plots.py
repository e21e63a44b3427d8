"""The paper's Figure 4, right (log-prob by position around the first differing token) from a log-prob analysis,
and chosen/rejected log-probs over training from runs' trainer_state.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

from axolotl_dpop.atomic import atomic_write
from smaug.common.errors import UserError

TRAINING_KEYS = ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies", "dpop/penalty")
PANELS = {"logps": "sequence log-prob", "rewards/margins": "reward margin", "dpop/penalty": "DPOP penalty"}


def new_figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(7 if panels == 1 else 5.5 * panels, 4), squeeze=False)
    return plt, fig, axes[0], plt.rcParams["axes.prop_cycle"].by_key()["color"]


def save_png(plt, fig, out_png: str | Path) -> Path:
    try:
        return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def _name(model: str) -> str:
    return Path(model).name if Path(model).is_dir() else model


def shifted(curve: dict) -> tuple[list[int], list[float]]:
    """A positional log-prob curve moved to 0 at position -1, as the paper draws Figure 4 (right); unmoved when no
    pair has a token before its first difference."""
    at, values = curve["position"], curve["mean_logp"]
    zero = values[at.index(-1)] if -1 in at else 0.0
    return at, [v - zero for v in values]


def plot_positional(result: dict, out_png: str | Path) -> Path:
    """Figure 4 (right): the mean log-prob of the preferred completion's tokens by position relative to the first
    differing token, each model shifted to 0 at position -1, the reference included (dashed)."""
    plt, fig, (ax,), colours = new_figure(1)
    curves = {f"{_name(result['reference'])} (reference)": result["reference_stats"]}
    curves |= {_name(model): stats for model, stats in result["models"].items()}
    for i, (name, stats) in enumerate(curves.items()):
        style = "--" if i == 0 else "-"
        ax.plot(*shifted(stats["positional_logp"]["chosen"]), style, color=colours[i % len(colours)], label=name)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="token position relative to the first differing token", ylabel="log-prob, 0 at position -1")
    ax.set_title(f"Preferred completions by position ({result['n_pairs']} pairs)")
    ax.legend(fontsize=8)
    return save_png(plt, fig, out_png)


def find_trainer_state(path: str | Path) -> Path:
    """trainer_state.json itself, in a run folder, or in its latest complete `checkpoint-N`."""
    from smaug.training.checkpoints import complete_checkpoints

    path = Path(path)
    checkpoints = complete_checkpoints(path)[-1:] if path.is_dir() else []
    candidates = [path, path / "trainer_state.json", *(c / "trainer_state.json" for c in checkpoints)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(
            f"{path}: no trainer_state.json here or in a checkpoint-N folder; pass a run's output dir or the file"
        )
    return found


def read_training_log(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} from a trainer_state.json's log_history (its train entries, else its eval_ ones)."""
    state_file = find_trainer_state(path)
    try:
        history = json.loads(state_file.read_bytes().decode("utf-8"))["log_history"]
        if not isinstance(history, list):
            raise TypeError(f"log_history is a {type(history).__name__}, not a list")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as err:
        raise UserError(f"{state_file}: not a trainer_state.json with a log_history ({err})") from None
    for prefix in ("", "eval_"):
        series: dict[str, tuple[list[int], list[float]]] = {}
        for entry in (e for e in history if isinstance(e, dict) and type(e.get("step")) is int):
            for key in (*TRAINING_KEYS, "dpop/active_fraction"):
                value = entry.get(prefix + key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    series.setdefault(key, ([], []))[0].append(entry["step"])
                    series[key][1].append(float(value))
        if "logps/chosen" in series and "logps/rejected" in series:
            return series
    raise UserError(
        f"{state_file}: log_history has no logps/chosen and logps/rejected entries; "
        "is this a DPO/DPOP run (TRL logs them every logging_steps)?"
    )


def plot_training(runs: dict[str, str | Path], out_png: str | Path) -> Path:
    """Figure 5: chosen/rejected log-probs over training steps, one colour per run (DPO against DPOP, say), then
    the reward margin and the DPOP penalty when a run logged them."""
    if not runs:
        raise UserError("no runs given; pass one or more run folders (LABEL=PATH to name them)")
    logs = {label: read_training_log(path) for label, path in runs.items()}
    panels = [p for p in PANELS if p == "logps" or any(p in series for series in logs.values())]
    plt, fig, axes, colours = new_figure(len(panels))
    for i, (label, series) in enumerate(logs.items()):
        for ax, panel in zip(axes, panels):
            lines = [("logps/chosen", "-"), ("logps/rejected", "--")] if panel == "logps" else [(panel, "-")]
            for key, style in (line for line in lines if line[0] in series):
                name = f"{label} {key.split('/')[1]}" if panel == "logps" else label
                ax.plot(*series[key], style, color=colours[i % len(colours)], label=name)
    for ax, panel in zip(axes, panels):
        ax.set(xlabel="step", title=PANELS[panel])
        ax.legend(fontsize=8)
    return save_png(plt, fig, out_png)
