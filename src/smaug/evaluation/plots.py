"""The paper's Figure 4 (Δ log-prob by position around the first differing token) from a log-prob analysis, and
Figure 5 (chosen/rejected log-probs over training) from runs' trainer_state.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

from axolotl_dpop.atomic import atomic_write
from smaug.common.errors import UserError

TRAINING_KEYS = ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies", "dpop/penalty")
PANELS = {"logps": "sequence log-prob", "rewards/margins": "reward margin", "dpop/penalty": "DPOP penalty"}


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(7 if panels == 1 else 5.5 * panels, 4), squeeze=False)
    return plt, fig, axes[0], plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(plt, fig, out_png: str | Path) -> Path:
    try:
        return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def plot_positional(result: dict, out_png: str | Path) -> Path:
    """Figure 4: mean Δ log-prob per token against the position relative to the first differing token."""
    plt, fig, (ax,), colours = _figure(1)
    for i, (model, stats) in enumerate(result["models"].items()):
        for side, style in (("chosen", "-"), ("rejected", "--")):
            curve, name = stats["positional"][side], Path(model).name if Path(model).is_dir() else model
            ax.plot(
                curve["position"], curve["mean_delta"], style, color=colours[i % len(colours)], label=f"{name} {side}"
            )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="token position relative to the first differing token", ylabel="Δ log-prob vs reference (per token)")
    reference = Path(result["reference"]).name if Path(result["reference"]).is_dir() else result["reference"]
    ax.set_title(f"Log-prob change vs {reference} ({result['n_pairs']} pairs)")
    ax.legend(fontsize=8)
    return _save(plt, fig, out_png)


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
    plt, fig, axes, colours = _figure(len(panels))
    for i, (label, series) in enumerate(logs.items()):
        for ax, panel in zip(axes, panels):
            lines = [("logps/chosen", "-"), ("logps/rejected", "--")] if panel == "logps" else [(panel, "-")]
            for key, style in (line for line in lines if line[0] in series):
                name = f"{label} {key.split('/')[1]}" if panel == "logps" else label
                ax.plot(*series[key], style, color=colours[i % len(colours)], label=name)
    for ax, panel in zip(axes, panels):
        ax.set(xlabel="step", title=PANELS[panel])
        ax.legend(fontsize=8)
    return _save(plt, fig, out_png)
