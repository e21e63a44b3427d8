"""The axolotl YAMLs in recipes/: loading them, deriving one from another, and axolotl's own validation of them
run offline against a described node."""

from __future__ import annotations

import copy
from importlib import metadata
from pathlib import Path
from typing import Any

import pydantic
import yaml

from axolotl_dpop.atomic import write_text
from smaug.common.errors import UserError, validation_error
from smaug.common.paths import RECIPES_DIR, REPO_ROOT, rel

# Folders of recipes/ that hold no runnable recipe.
_NOT_RECIPES = {"_base", "data", "templates", "deepspeed"}
# `rl:` values that train on preference pairs through TRL's DPOTrainer (the plugin's dpop and slic included).
PREFERENCE_RL = {"dpo", "dpop", "ipo", "slic"}

# The node the GPU recipes are written for (the paper's 8x H100), as axolotl's `validate_config(capabilities=...,
# env_capabilities=...)` takes it (axolotl.cli.config.gpu_capabilities); the GPU image installs this venv's torch.
CPU_CAPABILITIES = {"bf16": True, "fp8": False, "tf32": False, "n_gpu": 1, "n_node": 1, "compute_capability": None}
H100_NODE_CAPABILITIES = {**CPU_CAPABILITIES, "fp8": True, "tf32": True, "n_gpu": 8, "compute_capability": "sm_90"}
CUDA_ENV_CAPABILITIES = {"torch_version": metadata.version("torch").split("+")[0]}


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
    path = resolve_recipe_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{rel(path)}: not valid YAML ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{rel(path)}: an axolotl recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def list_recipes() -> list[Path]:
    return sorted(
        p for p in RECIPES_DIR.rglob("*.yml") if _NOT_RECIPES.isdisjoint(p.relative_to(RECIPES_DIR).parts[:-1])
    )


def needs_gpu(recipe: dict[str, Any]) -> bool:
    """Written for a CUDA node (flash-attention, DeepSpeed or TF32). 4-bit loading alone is not: bitsandbytes runs
    on the CPU too (recipes/cpu/tiny_dpop_qlora.yml)."""
    attn = str(recipe.get("attn_implementation") or "")
    return bool(
        recipe.get("deepspeed") or recipe.get("flash_attention") or attn.startswith("flash") or recipe.get("tf32")
    )


def is_preference(recipe: dict[str, Any]) -> bool:
    return str(recipe.get("rl") or "").lower() in PREFERENCE_RL


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


def dump_recipe(recipe: dict[str, Any], header: str = "") -> str:
    """YAML text of a recipe (keys in order) after a comment ``header`` (lines already starting with #)."""
    body = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=120)
    return (header.rstrip("\n") + "\n" if header else "") + body


def write_derived_recipe(path: Path, recipe: dict[str, Any], source: str | Path, what_differs: str) -> Path:
    header = (
        f"# Derived from {rel(source)} by smaug: {what_differs}.\n"
        "# Edit the source recipe, not this file: it is rewritten on every run."
    )
    return write_text(path, dump_recipe(recipe, header))


def validate_offline(
    recipe: str | Path | dict[str, Any],
    capabilities: dict | None = None,
    env_capabilities: dict | None = None,
    name: str | None = None,
):
    """axolotl's own validation, plugins registered first as `axolotl train` does, without a GPU or the Hub,
    against a described node (default: 8x H100); returns axolotl's validated config. ``name`` names a dict
    recipe in errors. (`load_cfg` cannot run offline: it fetches the model's config.)"""
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    name = name or ("<dict>" if isinstance(recipe, dict) else rel(resolve_recipe_path(recipe)))
    cfg = DictDefault(copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe))
    try:
        prepare_plugins(cfg)  # the DPOP plugin maps `rl: dpop` onto axolotl's DPO
        return validate_config(
            cfg,
            capabilities=capabilities or H100_NODE_CAPABILITIES,
            env_capabilities=env_capabilities or CUDA_ENV_CAPABILITIES,
        )
    except pydantic.ValidationError as err:
        raise validation_error(err, f"{name}: axolotl rejects this recipe") from None
    except (ValueError, TypeError, ImportError, AttributeError) as err:
        raise UserError(f"{name}: axolotl rejects this recipe: {' '.join(str(err).split())}") from None
