"""The one `smaug` CLI. Each subsystem module exposes ``register(subparsers)`` and owns its subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

from smaug.errors import UserError

# module (inside the smaug package) -> it registers one top-level subcommand
SUBCOMMAND_MODULES = [
    "tiny",
    "recipes",
    "chain",
    "cards",
    "publish",
    "evaluation.logprobs",
    "evaluation.contamination",
    "evaluation.mtbench",
    "evaluation.cli",
    "data.cli",
    "reproduce",
    "demo_model",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smaug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"smaug.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as err:  # a clear message, no traceback: the user can fix it
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
