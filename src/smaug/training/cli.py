"""`smaug recipes list|validate|generate` and `smaug chain run|status|list` (what `make smaug-34b` and
`make status CHAIN=...` call)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    recipes = subparsers.add_parser("recipes", help="list, validate (offline) and generate the axolotl recipes")
    sub = recipes.add_subparsers(dest="recipes_command", required=True)
    gen = sub.add_parser("generate", help="write the generated recipes from recipes/generate.yaml")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file is stale")
    gen.set_defaults(func=_cmd_generate)
    val = sub.add_parser("validate", help="axolotl's config validation, offline, against an 8x H100 node")
    val.add_argument("recipes", nargs="*", help="recipe files (default: all)")
    val.set_defaults(func=_cmd_validate)
    lst = sub.add_parser("list", help="every runnable recipe with its base model and loss")
    lst.set_defaults(func=_cmd_list_recipes)

    chain = subparsers.add_parser("chain", help="run a chain of training stages (what `make smaug-34b` calls)")
    sub = chain.add_subparsers(dest="chain_command", required=True)
    run = sub.add_parser("run", help="run a chain from recipes/chains.yaml (skips done stages, resumes killed ones)")
    run.add_argument("name", help="chain name, e.g. smaug-34b, smaug-72b, smaug-7b, tiny")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan, commands and a GPU memory estimate; run nothing (make: DRY_RUN=1)",
    )
    run.add_argument(
        "--output-root",
        type=Path,
        default=os.environ.get("SMAUG_OUTPUT_ROOT") or None,
        help="write every stage under this folder instead of ./outputs (env SMAUG_OUTPUT_ROOT; on "
        "several nodes: a folder on shared storage)",
    )
    run.add_argument(
        "--skip-preflight", action="store_true", help="do not check the GPUs first (make: SMAUG_SKIP_PREFLIGHT=1)"
    )
    run.set_defaults(func=_cmd_run)
    status = sub.add_parser(
        "status",
        help="where each stage of a chain stands and what the next run would do "
        "(reads files only; make: make status CHAIN=NAME)",
    )
    status.add_argument("name", help="chain name, e.g. smaug-34b, tiny")
    status.add_argument(
        "--output-root",
        type=Path,
        default=os.environ.get("SMAUG_OUTPUT_ROOT") or None,
        help="the --output-root the chain runs with (env SMAUG_OUTPUT_ROOT)",
    )
    status.set_defaults(func=_cmd_status)
    lst = sub.add_parser("list", help="the chains and their stages")
    lst.set_defaults(func=_cmd_list_chains)


def _cmd_generate(args: argparse.Namespace) -> int:
    from axolotl_dpop.atomic import write_text
    from smaug.common.paths import RECIPES_DIR
    from smaug.training.generate import generated_recipes, stale_generated

    if args.check:
        stale = stale_generated()
        for name in stale:
            print(f"stale: recipes/{name} (run `smaug recipes generate`)")
        return 1 if stale else 0
    for name, text in generated_recipes().items():
        write_text(RECIPES_DIR / name, text)
        print(f"wrote recipes/{name}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from smaug.common.paths import rel
    from smaug.training.recipes import (
        CPU_CAPABILITIES,
        H100_NODE_CAPABILITIES,
        list_recipes,
        load_recipe,
        needs_gpu,
        resolve_recipe_path,
        validate_offline,
    )

    paths = [resolve_recipe_path(p) for p in args.recipes] or list_recipes()
    for path in paths:
        recipe = load_recipe(path)
        validate_offline(path, capabilities=H100_NODE_CAPABILITIES if needs_gpu(recipe) else CPU_CAPABILITIES)
        print(f"ok  {rel(path)}  ({recipe.get('rl') or 'sft'}, {recipe.get('base_model')})")
    return 0


def _cmd_list_recipes(args: argparse.Namespace) -> int:
    from smaug.common.paths import rel
    from smaug.training.recipes import list_recipes, load_recipe

    for path in list_recipes():
        recipe = load_recipe(path)
        print(f"{rel(path):45s} {str(recipe.get('rl') or 'sft'):5s} {recipe.get('base_model')}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from smaug.training.chains import run_chain

    try:
        return run_chain(args.name, args.output_root, dry_run=args.dry_run, skip_preflight=args.skip_preflight)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: run `smaug chain run {args.name}` again to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130


def _cmd_status(args: argparse.Namespace) -> int:
    from smaug.common.errors import UserError
    from smaug.training.chains import plan_chain, status_report

    try:
        print(status_report(plan_chain(args.name, args.output_root)))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the state of chain {args.name}: {err}") from None
    return 0


def _cmd_list_chains(args: argparse.Namespace) -> int:
    from smaug.training.chains import load_chains
    from smaug.training.preflight import hardware_text

    for name, spec in load_chains().items():
        print(f"{name}: {' -> '.join(spec['stages'])}  [{hardware_text(spec.get('hardware') or {})}]")
    return 0
