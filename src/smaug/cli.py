"""The one `smaug` CLI. Its command tree mirrors the package: one group per flow, each owned by that flow's
`cli` module (`register(subparsers)` adds the group; `COMMANDS` builds each subcommand).

    smaug data      build | stats | synth-metamath                         (smaug.data)
    smaug recipes   list | validate | generate                             (smaug.training)
    smaug chain     run | list                                             (smaug.training)
    smaug eval      run | compare | suites | mtbench | contamination | logprobs | plot-training   (smaug.evaluation)
    smaug release   card | publish                                         (smaug.release)
    smaug showcase  demo | reproduce | tiny-model | demo-model             (smaug.showcase)

The spellings of earlier versions (`smaug card`, `smaug publish`, `smaug mtbench`, `smaug contamination`,
`smaug logprobs`, `smaug demo`, `smaug reproduce`, `smaug tiny-model`, `smaug demo-model`) still work.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from smaug.common.errors import UserError

# package (inside smaug) whose `cli` module registers its group(s), in the order `smaug --help` lists them
FLOWS = ["data", "training", "evaluation", "release", "showcase"]
# old top-level spelling -> (flow, subcommand)
ALIASES = {
    "card": ("release", "card"),
    "publish": ("release", "publish"),
    "mtbench": ("evaluation", "mtbench"),
    "contamination": ("evaluation", "contamination"),
    "logprobs": ("evaluation", "logprobs"),
    "demo": ("showcase", "demo"),
    "reproduce": ("showcase", "reproduce"),
    "tiny-model": ("showcase", "tiny-model"),
    "demo-model": ("showcase", "demo-model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smaug", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {flow: importlib.import_module(f"smaug.{flow}.cli") for flow in FLOWS}
    for module in modules.values():
        module.register(sub)
    visible = list(sub.choices)
    for alias, (flow, command) in ALIASES.items():
        modules[flow].COMMANDS[command](sub, alias)
    sub.metavar = "{" + ",".join(visible) + "}"  # the aliases work but are not advertised
    for action in list(sub._choices_actions):  # noqa: SLF001 - argparse has no public way to hide a subparser
        if action.dest in ALIASES:
            sub._choices_actions.remove(action)  # noqa: SLF001
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
