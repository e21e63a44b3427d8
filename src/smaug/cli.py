"""The one `smaug` CLI. Its command tree mirrors the package: one group per flow, each owned by that flow's
`cli` module (`register(subparsers)` adds the group; `COMMANDS` builds each subcommand).

    smaug data      build | stats | synth-metamath                         (smaug.data)
    smaug recipes   list | validate | generate                             (smaug.training)
    smaug chain     run | list                                             (smaug.training)
    smaug eval      run | compare | suites | mtbench | contamination | logprobs | plot-training   (smaug.evaluation)
    smaug release   card | publish                                         (smaug.release)
    smaug showcase  demo | reproduce | tiny-model | demo-model             (smaug.showcase)

A mistake the user can fix (a UserError) or one the environment made (a path that is a folder, not writable
or full; a network failure) is one line on stderr and exit status 2; anything else is a bug and keeps its
traceback. SMAUG_DEBUG=1 shows the traceback of every error.

The spellings of earlier versions (`smaug card`, `smaug publish`, `smaug mtbench`, `smaug contamination`,
`smaug logprobs`, `smaug demo`, `smaug reproduce`, `smaug tiny-model`, `smaug demo-model`) still work.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
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


# What the environment, not the code, got wrong: a path that is a folder, not writable, missing, full, ...
_PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOENT,
                errno.ENAMETOOLONG, errno.ELOOP, errno.EBUSY, errno.ETXTBSY, errno.ENOTEMPTY, errno.EXDEV}
# ... and conditions of the machine, which may name no file.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.EIO, errno.EROFS}
_ADVICE = {
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.EACCES: "permission denied; choose a location you can write to, or fix the permissions",
    errno.EPERM: "operation not permitted; choose another location, or fix the permissions",
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.EEXIST: "it already exists",
    errno.ENOENT: "no such file or folder",
}
DEBUG_ENV = "SMAUG_DEBUG"  # =1: let every exception through with its traceback


def environment_error(err: BaseException) -> str | None:
    """The one-line message for an exception the environment caused (a path, the disk, the network), or None
    for anything else: those are bugs and keep their traceback."""
    from smaug.common.hub import network_failure

    if isinstance(err, OSError) and err.errno is not None:
        path = err.filename2 if err.filename2 is not None else err.filename
        if path is not None and err.errno in _PATH_ERRNOS | _MACHINE_ERRNOS:
            name = os.fsdecode(path) if isinstance(path, bytes) else str(path)
            return f"{name}: {_ADVICE.get(err.errno, err.strerror)}"
        if path is None and err.errno in _MACHINE_ERRNOS:
            return f"{_ADVICE.get(err.errno, err.strerror)} ({err.strerror})"
    failure = network_failure(err)
    if failure is not None:
        detail = " ".join(str(failure).split())
        return f"network failure ({type(failure).__name__}: {detail}); check the connection and run again"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`smaug ... | head`): nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as err:  # a clear message, no traceback: the user can fix it
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - only the environment's errors are caught, bugs are re-raised
        message = environment_error(err)
        if message is None:
            raise
        print(f"error: {message} (set {DEBUG_ENV}=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
