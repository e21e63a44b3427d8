"""Where things live: the repository's folders and one function per kind of output, so Make, the CLI and
tests agree."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from smaug.common.hub import looks_local  # noqa: F401  (the chain's import of the one predicate)

REPO_ROOT = Path(__file__).resolve().parents[3]
RECIPES_DIR = REPO_ROOT / "recipes"
EVAL_CONFIG_DIR = REPO_ROOT / "eval"
MODEL_CARDS_DIR = REPO_ROOT / "model_cards"
# Everything the tools write goes under here unless told otherwise (SMAUG_RESULTS overrides).
RESULTS_DIR = Path(os.environ.get("SMAUG_RESULTS", REPO_ROOT / "results"))


def rel(path: str | Path) -> str:
    """`recipes/x.yml` for a path inside the repo (how users quote files), else the path as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def repo_path(path: str | Path) -> Path:
    """A path as written in a recipe or chains.yaml: absolute as is, else relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def model_slug(model: str) -> str:
    """A filesystem-safe name for a model: `org__name` for a Hub id, `name-<hash8>` for a local folder.

    The hash (of the absolute path) keeps two local folders both called `final/` apart."""
    path = Path(model).expanduser()
    if path.exists():
        resolved = str(path.resolve())
        digest = hashlib.sha256(resolved.encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', path.resolve().name)}-{digest}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model.replace("/", "__"))


def eval_dir(model: str, suite: str, root: Path | None = None) -> Path:
    """`results/eval/<model slug>/<suite>/`: raw harness JSON, summary.json and summary.md live here."""
    return (root or RESULTS_DIR) / "eval" / model_slug(model) / suite
