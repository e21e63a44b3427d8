"""The generated recipes: recipes/<name> = a base recipe (recipes/_base/...) with overrides, as
recipes/generate.yaml describes. `smaug recipes generate` writes them; `--check` (and a test) says which
committed files differ from the generator's output."""

from __future__ import annotations

from pathlib import Path

import yaml

from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR, rel
from smaug.training.recipes import derive_recipe, dump_recipe

GENERATE_SPEC = RECIPES_DIR / "generate.yaml"


def _header(base_text: str) -> str:
    lines = []
    for line in base_text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def generated_recipes(spec_path: Path = GENERATE_SPEC) -> dict[str, str]:
    """{file name under recipes/: full text} for every recipe recipes/generate.yaml describes."""
    spec = yaml.safe_load(spec_path.read_text()) or {}
    entries = spec.get("recipes")
    if not isinstance(entries, dict):
        raise UserError(f"{rel(spec_path)}: needs a `recipes:` mapping of file name -> {{base, overrides}}")
    out: dict[str, str] = {}
    for name, entry in entries.items():
        for field in ("base", "title"):
            if not entry.get(field):
                raise UserError(f"{rel(spec_path)}: recipes.{name}: missing `{field}`")
        base_path = RECIPES_DIR / entry["base"]
        if not base_path.is_file():
            raise UserError(f"{rel(spec_path)}: recipes.{name}.base: {rel(base_path)} does not exist")
        base_text = base_path.read_text()
        body = derive_recipe(yaml.safe_load(base_text), entry.get("overrides") or {})
        fills = {
            "{title}": entry["title"],
            "{notes}": entry.get("notes", ""),
            "{recipe}": name,
            "{chain}": entry.get("chain", ""),
            "{output_dir}": str(body.get("output_dir", "")),
        }
        header = _header(base_text)
        for key, value in fills.items():
            header = header.replace(key, value)
        out[name] = dump_recipe(body, header)
    return out


def stale_generated(spec_path: Path = GENERATE_SPEC) -> list[str]:
    """Names of generated recipes whose committed file differs from the generator's output (or is missing)."""
    stale = []
    for name, text in generated_recipes(spec_path).items():
        target = RECIPES_DIR / name
        if not target.is_file() or target.read_text() != text:
            stale.append(name)
    return stale
