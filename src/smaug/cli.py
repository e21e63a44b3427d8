"""smaug: build the Smaug paper's preference data, train with DPOP, evaluate, and release.

    smaug data      build the paper's pair datasets (MetaMath, ARC, HellaSwag) and measure them
    smaug recipes   list, validate (offline) and generate the axolotl recipes
    smaug chain     run a chain of training stages (make smaug-34b), see where it stands
    smaug eval      score models (Open LLM Leaderboard v1, MT-Bench), contamination, log-prob analysis
    smaug release   write the licence-aware model card and publish to the Hub
    smaug showcase  the CPU demo, the paper's failure mode on a laptop, tiny models

A mistake you can fix (a bad file, field or value; a path that is a folder, not writable or full; a network
failure) is one line on stderr and exit status 2. SMAUG_DEBUG=1 shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from smaug.common.errors import UserError

FLOWS = ["data", "training", "evaluation", "release", "showcase"]  # each `smaug.<flow>.cli.register` adds its groups


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smaug", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for flow in FLOWS:
        importlib.import_module(f"smaug.{flow}.cli").register(sub)
    return parser


# What the environment, not the code, got wrong: a path that is a folder, not writable, missing, full, ...
_PATH_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EBUSY,
    errno.ETXTBSY,
    errno.ENOTEMPTY,
    errno.EXDEV,
}
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
