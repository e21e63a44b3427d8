"""The paper's figures from our outputs: Figure 4 (Δ log-prob by position around the first differing token)
from a log-prob analysis, Figure 5 (chosen/rejected log-probs over training) from a run's trainer_state.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

from axolotl_dpop.atomic import atomic_write
from smaug.common.errors import UserError


def _save_figure(fig, out_png: str | Path) -> Path:
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(model: str) -> str:
    path = Path(model)
    return path.name if path.is_dir() else model


def plot_positional(result: dict, out_png: str | Path) -> Path:
    """Figure 4 style: mean Δ log-prob per token vs position relative to the first differing token."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (model, stats) in enumerate(result["models"].items()):
        colour = colours[i % len(colours)]
        for side, style in (("chosen", "-"), ("rejected", "--")):
            curve = stats["positional"][side]
            ax.plot(curve["position"], curve["mean_delta"], style, color=colour, label=f"{_label(model)} {side}")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("token position relative to the first differing token")
    ax.set_ylabel("Δ log-prob vs reference (per token)")
    ax.set_title(f"Log-prob change vs {_label(result['reference'])} ({result['n_pairs']} pairs)")
    ax.legend(fontsize=8)
    try:
        return _save_figure(fig, out_png)
    finally:
        plt.close(fig)


def find_trainer_state(path: str | Path) -> Path:
    """trainer_state.json itself, in a run folder, or in its latest complete ``checkpoint-N``."""
    from smaug.training.checkpoints import complete_checkpoints

    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "trainer_state.json").is_file():
            return path / "trainer_state.json"
        checkpoints = complete_checkpoints(path)
        if checkpoints:
            return checkpoints[-1] / "trainer_state.json"
    raise UserError(
        f"{path}: no trainer_state.json here or in a checkpoint-N folder; pass a run's output dir or the file"
    )


TRAINING_KEYS = ("logps/chosen", "logps/rejected", "rewards/margins", "rewards/accuracies", "dpop/penalty")


def read_training_log(path: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """``{metric: (steps, values)}`` from a trainer_state.json log_history (train entries; eval_ if no train)."""
    state_file = find_trainer_state(path)
    try:
        history = json.loads(state_file.read_bytes().decode("utf-8"))["log_history"]
        if not isinstance(history, list):
            raise TypeError(f"log_history is a {type(history).__name__}, not a list")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as err:
        raise UserError(f"{state_file}: not a trainer_state.json with a log_history ({err})") from None
    series: dict[str, tuple[list[int], list[float]]] = {}
    for prefix in ("", "eval_"):
        for entry in (e for e in history if isinstance(e, dict)):
            for key in TRAINING_KEYS + ("dpop/active_fraction",):
                value = entry.get(prefix + key)
                if isinstance(value, (int, float)) and math.isfinite(value) and type(entry.get("step")) is int:
                    steps, values = series.setdefault(key, ([], []))
                    steps.append(entry["step"])
                    values.append(float(value))
        if "logps/chosen" in series:
            break
    if "logps/chosen" not in series or "logps/rejected" not in series:
        raise UserError(
            f"{state_file}: log_history has no logps/chosen and logps/rejected entries; "
            "is this a DPO/DPOP run (TRL logs them every logging_steps)?"
        )
    return series


def plot_training(runs: dict[str, str | Path], out_png: str | Path) -> Path:
    """Figure 5 style: chosen/rejected log-probs over training steps, one colour per run (e.g. DPO vs DPOP).

    A second panel shows the reward margin; a third the DPOP penalty when any run logged it."""
    if not runs:
        raise UserError("no runs given; pass one or more run folders (LABEL=PATH to name them)")
    logs = {label: read_training_log(path) for label, path in runs.items()}
    has_penalty = any("dpop/penalty" in series for series in logs.values())
    has_margin = any("rewards/margins" in series for series in logs.values())
    panels = ["logps"] + (["rewards/margins"] if has_margin else []) + (["dpop/penalty"] if has_penalty else [])
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, series) in enumerate(logs.items()):
        colour = colours[i % len(colours)]
        for ax, panel in zip(axes[0], panels):
            if panel == "logps":
                for key, style in (("logps/chosen", "-"), ("logps/rejected", "--")):
                    steps, values = series[key]
                    ax.plot(steps, values, style, color=colour, label=f"{label} {key.split('/')[1]}")
            elif panel in series:
                steps, values = series[panel]
                ax.plot(steps, values, "-", color=colour, label=label)
    titles = {"logps": "sequence log-prob", "rewards/margins": "reward margin", "dpop/penalty": "DPOP penalty"}
    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("step")
        ax.set_title(titles[panel])
        ax.legend(fontsize=8)
    try:
        return _save_figure(fig, out_png)
    finally:
        plt.close(fig)
