"""One chain run at a time per stage folder (and node rank): two runs writing the same folder would resume
from each other's checkpoints and overwrite each other's models.

A run holds an exclusive `flock` on `<parent>/.<folder>.node<R>.smaug-lock` for every folder it writes, for
the whole run. The kernel drops a flock when its process dies, kill -9 included, so a dead run never blocks
the next one; on NFS (v4) the server drops it when the client's lease ends. The file says who holds it (pid,
host, command, since). The lock is per node rank so that the nodes of one multi-node run (NODE_RANK 0..N-1,
outputs on shared storage) do not block each other, while two runs with the same rank do.

Where a file system has no flock, an exclusive-create lock file is used instead; a leftover from a process
that is dead on this host is taken over, one from another host is reported with its path to delete.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shlex
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from axolotl_dpop.atomic import host_name, pid_alive
from axolotl_dpop.provenance import utc_stamp
from smaug.common.errors import UserError

LOCK_SUFFIX = ".smaug-lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(folder: Path, node_rank: int = 0) -> Path:
    return folder.parent / f".{folder.name}.node{node_rank}{LOCK_SUFFIX}"


@dataclass
class Holder:
    pid: int
    host: str
    command: str
    since: str
    path: Path

    @property
    def alive(self) -> bool | None:
        """True/False when it can be told from here (same host), else None."""
        return pid_alive(self.pid) if self.host == host_name() else None

    def describe(self) -> str:
        text = f"pid {self.pid} on {self.host} ({self.command}) since {self.since}"
        if self.alive is False:  # the lock is still held: by a process it started (an orphaned axolotl train)
            text += f"; pid {self.pid} is gone, but a process it started still holds the lock (see `fuser {self.path}`)"
        return text


def read_holder(path: Path) -> Holder | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return Holder(
            int(info["pid"]), str(info["host"]), str(info.get("command", "?")), str(info.get("since", "?")), path
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def holder(folder: Path, node_rank: int = 0) -> Holder | None:
    """Who runs a chain on ``folder`` now, read without taking any lock (safe to call any time). None when nobody
    does: no lock file, or one left by a process that is dead on this host and whose lock nothing holds."""
    path = lock_path(folder, node_rank)
    found = read_holder(path)
    if found is None or found.alive is not False:
        return found
    return found if _flocked(path) else None


def holders(folder: Path) -> list[tuple[int, Holder]]:
    """(node rank, holder) of every run on ``folder`` now, whatever its node rank."""
    found = []
    for path in sorted(folder.parent.glob(f".{glob.escape(folder.name)}.node*{LOCK_SUFFIX}")):
        rank = path.name[len(folder.name) + 6 : -len(LOCK_SUFFIX)]
        if rank.isdigit():
            held = holder(folder, int(rank))
            if held is not None:
                found.append((int(rank), held))
    return found


def _flocked(path: Path) -> bool:
    """Whether some process holds a flock on the file (Linux /proc/locks; False where that cannot be told). The
    chain's `axolotl train` inherits the lock, so it stays held when the chain itself was killed."""
    try:
        st = path.stat()
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="utf-8") as handle:
            return any(len(f := line.split()) > 5 and f[1] == "FLOCK" and f[5] == wanted for line in handle)
    except OSError:
        return False


def _info() -> bytes:
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return json.dumps({"pid": os.getpid(), "host": host_name(), "command": command, "since": utc_stamp()}).encode()


class _Busy(Exception):
    def __init__(self, holder: Holder | None, path: Path, flock: bool):
        self.holder, self.path, self.flock = holder, path, flock


def _acquire(path: Path) -> tuple[int | None, bool]:
    """(fd, uses_flock). Raises _Busy when another run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _Busy(read_holder(path), path, True) from None
        except OSError as err:
            os.close(fd)
            if err.errno in _NO_FLOCK:
                return _acquire_exclusive_create(path), False
            raise
        # The previous holder unlinks the file as it releases it: make sure we locked the file the path names now.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, _info())
            os.fsync(fd)
            return fd, True
        os.close(fd)


def _acquire_exclusive_create(path: Path) -> None:
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            found = read_holder(path)
            if found is not None and found.alive is False:  # left by a dead process on this host
                path.unlink(missing_ok=True)
                continue
            raise _Busy(found, path, False) from None
        os.write(fd, _info())
        os.close(fd)
        return None
    raise _Busy(read_holder(path), path, False)


def _release(path: Path, fd: int | None) -> None:
    try:
        path.unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def hold(folders: list[Path], node_rank: int, what: str):
    """Hold the locks of ``folders`` (all or none) for the body, which gets the lock files' descriptors: pass them
    to the processes that write (`runner.run_logged(pass_fds=...)`), and the locks stay held while those run
    even if this process is killed. A UserError naming the holder if another run holds one."""
    taken: list[tuple[Path, int | None]] = []
    try:
        for folder in sorted(set(folders)):
            path = lock_path(folder, node_rank)
            try:
                fd, _ = _acquire(path)
            except _Busy as busy:
                raise UserError(_busy_message(folder, busy, what)) from None
            taken.append((path, fd))
        yield [fd for _, fd in taken if fd is not None]
    finally:
        for path, fd in reversed(taken):
            _release(path, fd)


def _busy_message(folder: Path, busy: _Busy, what: str) -> str:
    who = busy.holder.describe() if busy.holder else "another process (its lock file gives no details)"
    text = (
        f"{folder} is in use by another chain run: {who}. Two runs on one stage folder would resume from "
        f"each other's checkpoints. Wait for it to finish ({what}), or stop it"
    )
    if busy.holder and busy.holder.alive is False:
        text += f" (find it: fuser {busy.path})"
    elif busy.holder:
        text += f" (kill {busy.holder.pid}" + (f" on {busy.holder.host})" if busy.holder.alive is None else ")")
    if not busy.flock and busy.holder is not None and busy.holder.alive is None:
        text += f"; if no such run exists on {busy.holder.host}, delete {busy.path}"
    return text + "."
