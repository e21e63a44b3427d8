"""`smaug recipes list|validate|generate` and `smaug chain run|status|list`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_generate(sub) -> None:
    parser = sub.add_parser("generate", help="write the generated recipes from recipes/generate.yaml")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file is stale")
    parser.set_defaults(func=_generate)


def _add_validate(sub) -> None:
    parser = sub.add_parser("validate", help="axolotl's config validation, offline, against an 8x H100 node")
    parser.add_argument("recipes", nargs="*", help="recipe files (default: all)")
    parser.set_defaults(func=_validate)


def _add_list_recipes(sub) -> None:
    sub.add_parser("list", help="every runnable recipe with its base model and loss").set_defaults(func=_list_recipes)


def _add_chain_command(sub, command: str, help: str, root_help: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(command, help=help)
    parser.add_argument("name", help="chain name, e.g. smaug-34b, smaug-72b, smaug-7b, tiny")
    root = os.environ.get("SMAUG_OUTPUT_ROOT") or None
    parser.add_argument("--output-root", type=Path, default=root, help=f"{root_help} (env SMAUG_OUTPUT_ROOT)")
    return parser


def _add_run(sub) -> None:
    parser = _add_chain_command(
        sub,
        "run",
        "run a chain from recipes/chains.yaml (skips done stages, resumes killed ones)",
        "write every stage under this folder instead of ./outputs (on several nodes: shared storage)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan, commands and memory estimate; run nothing (make: DRY_RUN=1)",
    )
    parser.add_argument(
        "--skip-preflight", action="store_true", help="do not check the GPUs first (make: SMAUG_SKIP_PREFLIGHT=1)"
    )
    parser.set_defaults(func=_run)


def _add_status(sub) -> None:
    where = "where each stage stands and what the next run would do (reads files only; make status CHAIN=NAME)"
    _add_chain_command(sub, "status", where, "the --output-root the chain runs with").set_defaults(func=_status)


def _add_list_chains(sub) -> None:
    sub.add_parser("list", help="the chains and their stages").set_defaults(func=_list_chains)


def register(subparsers) -> None:
    group = subparsers.add_parser("recipes", help="list, validate (offline) and generate the axolotl recipes")
    sub = group.add_subparsers(dest="recipes_command", required=True)
    _add_generate(sub)
    _add_validate(sub)
    _add_list_recipes(sub)
    group = subparsers.add_parser("chain", help="run a chain of training stages (what `make smaug-34b` calls)")
    sub = group.add_subparsers(dest="chain_command", required=True)
    _add_run(sub)
    _add_status(sub)
    _add_list_chains(sub)


def _generate(args: argparse.Namespace) -> int:
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


def _validate(args: argparse.Namespace) -> int:
    from smaug.common.paths import rel
    from smaug.training import recipes as R

    for path in [R.resolve_recipe_path(p) for p in args.recipes] or R.list_recipes():
        recipe = R.load_recipe(path)
        R.validate_offline(path, capabilities=R.H100_NODE_CAPABILITIES if R.needs_gpu(recipe) else R.CPU_CAPABILITIES)
        print(f"ok  {rel(path)}  ({recipe.get('rl') or 'sft'}, {recipe.get('base_model')})")
    return 0


def _list_recipes(args: argparse.Namespace) -> int:
    from smaug.common.paths import rel
    from smaug.training.recipes import list_recipes, load_recipe

    for path in list_recipes():
        recipe = load_recipe(path)
        print(f"{rel(path):45s} {str(recipe.get('rl') or 'sft'):5s} {recipe.get('base_model')}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from smaug.training.chains import run_chain

    try:
        return run_chain(args.name, args.output_root, dry_run=args.dry_run, skip_preflight=args.skip_preflight)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: run `smaug chain run {args.name}` again to resume from the last checkpoint",
            file=sys.stderr,
        )
        return 130


def _status(args: argparse.Namespace) -> int:
    from smaug.training.chains import plan_chain, status_report

    print(status_report(plan_chain(args.name, args.output_root)))
    return 0


def _list_chains(args: argparse.Namespace) -> int:
    from smaug.training.chains import hardware_text, load_chains

    for name, spec in load_chains().items():
        print(f"{name}: {' -> '.join(spec['stages'])}  [{hardware_text(spec['hardware'])}]")
    return 0
