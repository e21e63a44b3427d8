"""One chain run per stage folder and node rank: an exclusive flock, held for the whole run and inherited by the
`axolotl train` it starts (killing the chain alone keeps the folder locked); the kernel drops it with its holders."""

from __future__ import annotations

import errno
import fcntl
import glob
import os
import shlex
import sys
from contextlib import contextmanager, suppress
from pathlib import Path

from pydantic import BaseModel, ValidationError

from axolotl_dpop.atomic import host_name, pid_alive
from axolotl_dpop.provenance import utc_stamp
from smaug.common.errors import UserError

SUFFIX = ".smaug-lock"


class Holder(BaseModel):
    pid: int = 0
    host: str = "?"
    command: str = "unknown: its lock file is unreadable"
    since: str = "?"

    def describe(self, path: Path) -> str:
        text = f"pid {self.pid} on {self.host} ({self.command}) since {self.since}"
        if self.host == host_name() and not pid_alive(self.pid):  # the lock is held by a process it started
            text += f"; pid {self.pid} is gone, but a process it started still holds the lock (find it: fuser {path})"
        return text


def lock_path(folder: Path, node_rank: int = 0) -> Path:
    return folder.parent / f".{folder.name}.node{node_rank}{SUFFIX}"


def holder(folder: Path, node_rank: int = 0) -> Holder | None:
    """Who holds the lock now; None when nobody does (a file left by a killed run does not count)."""
    try:
        fd = os.open(lock_path(folder, node_rank), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a probe: dropped at once
        return None
    except OSError:
        try:
            return Holder.model_validate_json(os.read(fd, 1 << 16))
        except ValidationError:
            return Holder()
    finally:
        os.close(fd)


def holders(folder: Path) -> list[tuple[int, Holder]]:
    """(node rank, holder) of every run on ``folder`` now."""
    found = []
    for path in sorted(folder.parent.glob(f".{glob.escape(folder.name)}.node*{SUFFIX}")):
        rank = path.name[len(folder.name) + 6 : -len(SUFFIX)]
        if rank.isdigit() and (held := holder(folder, int(rank))) is not None:
            found.append((int(rank), held))
    return found


def _take(folder: Path, node_rank: int, what: str) -> int:
    path = lock_path(folder, node_rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise UserError(
                    f"{path.parent}: this file system has no flock ({err.strerror}), which keeps two chain runs off "
                    "one stage folder; put the outputs on a local disk or NFSv4 (--output-root / SMAUG_OUTPUT_ROOT)"
                ) from None
            if not isinstance(err, BlockingIOError):
                raise
            found = holder(folder, node_rank)
            if found is None:  # let go meanwhile
                continue
            here = found.host == host_name()
            stop = (
                "" if here and not pid_alive(found.pid) else f" (kill {found.pid}{'' if here else ' on ' + found.host})"
            )
            raise UserError(
                f"{folder} is in use by another chain run: {found.describe(path)}. Two runs on one stage folder would "
                f"resume from each other's checkpoints. Wait for it to finish ({what}), or stop it{stop}."
            ) from None
        # The previous holder unlinks the file as it lets go: the lock counts only on the file the path names now.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
            info = Holder(pid=os.getpid(), host=host_name(), command=command, since=utc_stamp())
            os.ftruncate(fd, 0)
            os.write(fd, info.model_dump_json().encode())
            return fd
        os.close(fd)


@contextmanager
def hold(folders: list[Path], node_rank: int, what: str):
    """Hold the locks of ``folders`` (all or none) for the body, which gets their descriptors to pass on to the
    processes that write (`runner.run_logged(pass_fds=...)`). A UserError naming the holder if one is taken."""
    taken: list[tuple[Path, int]] = []
    # folders made for the lock files are removed again if nothing else was written in them
    made = {p for folder in folders for p in (folder.parent, *folder.parent.parents) if not p.exists()}
    try:
        for folder in sorted(set(folders)):
            taken.append((lock_path(folder, node_rank), _take(folder, node_rank, what)))
        yield [fd for _, fd in taken]
    finally:
        for path, fd in reversed(taken):
            path.unlink(missing_ok=True)
            os.close(fd)
        for folder in sorted(made, reverse=True):
            with suppress(OSError):
                folder.rmdir()
