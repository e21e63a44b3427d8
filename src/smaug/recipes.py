"""Recipes: load the axolotl YAMLs, validate them offline against a described GPU node, generate the sweeps.

The recipes are the single source of hyperparameters; the chain, the tests and the docs read them from here.
`smaug recipes generate` writes the generated recipes (base recipe + overrides, see recipes/generate.yaml);
`smaug recipes validate` runs axolotl's own config validation on them without a GPU or the Hub.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import yaml

from smaug.atomic import write_text_atomic
from smaug.errors import UserError
from smaug.paths import RECIPES_DIR, REPO_ROOT

GENERATE_SPEC = RECIPES_DIR / "generate.yaml"
# Recipes that are not runnable on their own: the generator's bases and the data/templates folders.
_NOT_RECIPES = {"_base", "data", "templates", "deepspeed"}

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
CUDA_ENV_CAPABILITIES = {"torch_version": "2.7.1"}
CPU_CAPABILITIES = {"bf16": True, "fp8": False, "tf32": False, "n_gpu": 1, "n_node": 1, "compute_capability": None}

PLUGIN = "axolotl_dpop.DPOPPlugin"


def rel(path: str | Path) -> str:
    """`recipes/x.yml` for a path inside the repo (how users quote recipes), else the path as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def resolve_recipe_path(name: str | Path) -> Path:
    """A recipe given as `smaug34b_dpop.yml`, `recipes/smaug34b_dpop.yml` or any path to a YAML file."""
    candidates = [Path(name), RECIPES_DIR / name, REPO_ROOT / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(f"recipe {name!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
                    f"`smaug recipes list` shows the recipes")


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
    """Every runnable recipe: recipes/*.yml and recipes/cpu/*.yml (not the generator's bases)."""
    found = [p for p in RECIPES_DIR.rglob("*.yml") if not (set(p.relative_to(RECIPES_DIR).parts[:-1]) & _NOT_RECIPES)]
    return sorted(found)


def needs_gpu(recipe: dict[str, Any]) -> bool:
    """Written for a CUDA node (flash-attention or DeepSpeed), so validated against one. 4-bit/8-bit loading
    alone does not need one: bitsandbytes runs those layers on the CPU too (recipes/cpu/tiny_dpop_qlora.yml)."""
    attn = str(recipe.get("attn_implementation") or "")
    return bool(recipe.get("deepspeed") or recipe.get("flash_attention") or attn.startswith("flash"))


def is_dpo_type(recipe: dict[str, Any]) -> bool:
    """A preference stage (policy + frozen reference): DPO, DPOP, IPO, SLiC all run through TRL's DPOTrainer."""
    return str(recipe.get("rl") or "").lower() in {"dpo", "dpop", "ipo"}


def is_dpop(recipe: dict[str, Any]) -> bool:
    return str(recipe.get("rl") or "").lower() == "dpop"


# --------------------------------------------------------------------------------------------------------------
# offline validation


def validate_offline(
    recipe: str | Path | dict[str, Any],
    capabilities: dict | None = None,
    env_capabilities: dict | None = None,
):
    """Run axolotl's own validation (plugins registered first, as `axolotl train` does) without a GPU or the
    Hub, against a described node (default: 8x H100). Returns axolotl's validated config (a DictDefault).

    `load_cfg` cannot be used offline because it fetches the model's config; this is the part of it that
    checks the YAML: `prepare_plugins(cfg)` (the DPOP plugin maps `rl: dpop` onto axolotl's DPO) and then
    `validate_config(cfg, capabilities, env_capabilities)`.
    """
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    name = "<dict>" if isinstance(recipe, dict) else rel(resolve_recipe_path(recipe))
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
        raise UserError(f"{name}: axolotl rejects this recipe: {err}") from None


# --------------------------------------------------------------------------------------------------------------
# generated recipes


def _merge(base: Any, override: Any) -> Any:
    """Mappings merge key by key (None deletes the key); anything else (lists included) replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _merge(merged.get(key), value)
        return merged
    return copy.deepcopy(override)


def _header(base_text: str) -> str:
    lines = []
    for line in base_text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


class _RecipeDumper(yaml.SafeDumper):
    """Block style, key order kept, multi-line strings as literal blocks."""


def _str_presenter(dumper, value):
    style = "|" if "\n" in value and not value.endswith(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_RecipeDumper.add_representer(str, _str_presenter)


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
        body = _merge(yaml.safe_load(base_text), entry.get("overrides") or {})
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
        dumped = yaml.dump(body, Dumper=_RecipeDumper, sort_keys=False, allow_unicode=True, width=120)
        out[name] = header + "\n" + dumped
    return out


def stale_generated(spec_path: Path = GENERATE_SPEC) -> list[str]:
    """Names of generated recipes whose committed file differs from the generator's output (or is missing)."""
    stale = []
    for name, text in generated_recipes(spec_path).items():
        target = RECIPES_DIR / name
        if not target.is_file() or target.read_text() != text:
            stale.append(name)
    return stale


# --------------------------------------------------------------------------------------------------------------
# CLI


def register(subparsers) -> None:
    parser = subparsers.add_parser("recipes", help="list, validate (offline) and generate the axolotl recipes")
    sub = parser.add_subparsers(dest="recipes_command", required=True)

    gen = sub.add_parser("generate", help="write the generated recipes from recipes/generate.yaml")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file is stale")
    gen.set_defaults(func=_cmd_generate)

    val = sub.add_parser("validate", help="axolotl's config validation, offline, against an 8x H100 node")
    val.add_argument("recipes", nargs="*", help="recipe files (default: all)")
    val.set_defaults(func=_cmd_validate)

    lst = sub.add_parser("list", help="every runnable recipe with its base model and loss")
    lst.set_defaults(func=_cmd_list)


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.check:
        stale = stale_generated()
        for name in stale:
            print(f"stale: recipes/{name} (run `smaug recipes generate`)")
        return 1 if stale else 0
    for name, text in generated_recipes().items():
        write_text_atomic(RECIPES_DIR / name, text)
        print(f"wrote recipes/{name}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    paths = [resolve_recipe_path(p) for p in args.recipes] or list_recipes()
    for path in paths:
        recipe = load_recipe(path)
        validate_offline(path, capabilities=H100_NODE_CAPABILITIES if needs_gpu(recipe) else CPU_CAPABILITIES)
        print(f"ok  {rel(path)}  ({recipe.get('rl') or 'sft'}, {recipe.get('base_model')})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    for path in list_recipes():
        recipe = load_recipe(path)
        print(f"{rel(path):45s} {str(recipe.get('rl') or 'sft'):5s} {recipe.get('base_model')}")
    return 0
