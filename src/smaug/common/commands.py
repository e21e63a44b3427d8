"""Building the CLI: a group of subcommands (`smaug eval …`) from a flow's `COMMANDS` builders."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_group(subparsers, name: str, help: str, commands: dict[str, Callable], description: str | None = None):
    """`smaug NAME <command>`, one subcommand per ``commands`` entry (name -> `add_x(sub, name)` builder)."""
    group = subparsers.add_parser(name, help=help, description=description or help,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(dest=f"{name}_command", required=True)
    for command, add in commands.items():
        add(sub, command)
    return group
