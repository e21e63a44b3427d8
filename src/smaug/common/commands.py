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


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, sizes, lengths)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (0 meaning none / all, as the option's help says)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 or more")
    return value
