"""Recipes: the axolotl YAMLs in recipes/, the single source of hyperparameters.

Loading (with errors that name the file), the one way to derive a recipe from another (`derive_recipe` +
`write_derived_recipe`: the generator's sweeps, the chain's copy with paths under another output root,
`make reproduce`'s λ variants), and axolotl's own validation run offline against a described GPU node.
"""

from __future__ import annotations

import copy
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from axolotl_dpop.atomic import write_text
from smaug.common.errors import UserError
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, rel

# Recipes that are not runnable on their own: the generator's bases and the data/templates folders.
_NOT_RECIPES = {"_base", "data", "templates", "deepspeed"}
# `rl:` values that train on preference pairs through TRL's DPOTrainer (the plugin's dpop and slic included).
PREFERENCE_RL = {"dpo", "dpop", "ipo", "slic"}

# The GPU node the real recipes are written for (the paper's 8x H100), in the shape axolotl's
# `validate_config(capabilities=..., env_capabilities=...)` expects (see axolotl.cli.config.gpu_capabilities).
H100_NODE_CAPABILITIES = {
    "bf16": True,
    "fp8": True,
    "tf32": True,
    "n_gpu": 8,
    "n_node": 1,
    "compute_capability": "sm_90",
}
# The GPU image installs the same pinned torch as this venv (the Dockerfile reads requirements/constraints.txt),
# so validation sees the torch version the run will have.
CUDA_ENV_CAPABILITIES = {"torch_version": metadata.version("torch").split("+")[0]}
CPU_CAPABILITIES = {"bf16": True, "fp8": False, "tf32": False, "n_gpu": 1, "n_node": 1, "compute_capability": None}


def resolve_recipe_path(name: str | Path) -> Path:
    """A recipe given as `smaug34b_dpop.yml`, `recipes/smaug34b_dpop.yml` or any path to a YAML file."""
    candidates = [Path(name), RECIPES_DIR / name, REPO_ROOT / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(
        f"recipe {name!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
        f"`smaug recipes list` shows the recipes"
    )


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe's YAML as a dict; a clear error naming the file if it is missing or not a mapping."""
    path = resolve_recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{rel(path)}: not valid YAML ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{rel(path)}: an axolotl recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def list_recipes() -> list[Path]:
    """Every runnable recipe: recipes/**/*.yml except the generator's bases."""
    found = [p for p in RECIPES_DIR.rglob("*.yml") if not (set(p.relative_to(RECIPES_DIR).parts[:-1]) & _NOT_RECIPES)]
    return sorted(found)


def needs_gpu(recipe: dict[str, Any]) -> bool:
    """Written for a CUDA node (flash-attention or DeepSpeed), so validated against one. 4-bit/8-bit loading
    alone does not need one: bitsandbytes runs those layers on the CPU too (recipes/cpu/tiny_dpop_qlora.yml)."""
    attn = str(recipe.get("attn_implementation") or "")
    return bool(recipe.get("deepspeed") or recipe.get("flash_attention") or attn.startswith("flash"))


def is_preference(recipe: dict[str, Any]) -> bool:
    """A preference stage: DPO, DPOP, IPO, SLiC (both forms) all run through TRL's DPOTrainer."""
    return str(recipe.get("rl") or "").lower() in PREFERENCE_RL


# --------------------------------------------------------------------------------------------------------------
# deriving one recipe from another


def derive_recipe(base: Any, overrides: Any) -> Any:
    """``base`` with ``overrides`` merged in: mappings merge key by key (None deletes the key); anything else
    (lists included) replaces. Neither argument is modified."""
    if isinstance(base, dict) and isinstance(overrides, dict):
        merged = copy.deepcopy(base)
        for key, value in overrides.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = derive_recipe(merged.get(key), value)
        return merged
    return copy.deepcopy(overrides)


class _RecipeDumper(yaml.SafeDumper):
    """Block style, key order kept, multi-line strings as literal blocks."""


def _str_presenter(dumper, value):
    style = "|" if "\n" in value and not value.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RecipeDumper.add_representer(str, _str_presenter)


def dump_recipe(recipe: dict[str, Any], header: str = "") -> str:
    """YAML text of a recipe (keys in order), after a comment ``header`` (lines already starting with #)."""
    body = yaml.dump(recipe, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True, width=120)
    return (header.rstrip("\n") + "\n" if header else "") + body


def write_derived_recipe(path: Path, recipe: dict[str, Any], source: str | Path, what_differs: str) -> Path:
    """Write a derived recipe with a header saying where it comes from and what differs (edit the source)."""
    header = (
        f"# Derived from {rel(source)} by smaug: {what_differs}.\n"
        "# Edit the source recipe, not this file: it is rewritten on every run."
    )
    return write_text(path, dump_recipe(recipe, header))


# --------------------------------------------------------------------------------------------------------------
# offline validation


def validate_offline(
    recipe: str | Path | dict[str, Any],
    capabilities: dict | None = None,
    env_capabilities: dict | None = None,
    name: str | None = None,
):
    """Run axolotl's own validation (plugins registered first, as `axolotl train` does) without a GPU or the
    Hub, against a described node (default: 8x H100). Returns axolotl's validated config (a DictDefault).
    ``name`` names a dict recipe in errors (e.g. the chain stage it belongs to).

    `load_cfg` cannot be used offline because it fetches the model's config; this is the part of it that
    checks the YAML: `prepare_plugins(cfg)` (the DPOP plugin maps `rl: dpop` onto axolotl's DPO) and then
    `validate_config(cfg, capabilities, env_capabilities)`.
    """
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    name = name or ("<dict>" if isinstance(recipe, dict) else rel(resolve_recipe_path(recipe)))
    data = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    cfg = DictDefault(data)
    try:
        prepare_plugins(cfg)
        return validate_config(
            cfg,
            capabilities=capabilities or H100_NODE_CAPABILITIES,
            env_capabilities=env_capabilities or CUDA_ENV_CAPABILITIES,
        )
    except (ValueError, TypeError, ImportError, AttributeError) as err:
        raise UserError(f"{name}: axolotl rejects this recipe: {_one_line(err)}") from None


def _one_line(err: Exception) -> str:
    """pydantic's multi-line report as `field: message; ...` (other errors: their lines joined)."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            return "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ())) or 'config'}: {e.get('msg')}" for e in errors()
            )
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
