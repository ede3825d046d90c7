"""One run at a time per workdir: an advisory `flock` on `<workdir>/.oger-run.lock`.

Why flock and not a pid file: the kernel drops the lock the moment its holder dies (SIGKILL,
OOM, power loss of the process), so a stale lock of a dead run is taken over with no pid check
and no race between "is it dead?" and "take it" — two waiters never both win. The holder's pid,
host, run id and start time are written into the file only after the lock is held, so the
error a second run prints names the run in its way. Read-only commands never take it.

Limit: flock is not reliable on some network filesystems (older NFS); keep workdirs local.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from oger.contract.errors import OgerError

LOCK_NAME = ".oger-run.lock"


class WorkdirBusy(OgerError):
    """Another run holds the workdir and did not release it within the timeout."""


def lock_path(workdir: Path) -> Path:
    return Path(workdir) / LOCK_NAME


def read_holder(workdir: Path) -> dict | None:
    """What the current (or last) holder wrote: pid, host, run_id, started_at; None if unreadable."""
    try:
        data = json.loads(lock_path(workdir).read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process (no holder details written yet)"
    return (
        f"run {holder.get('run_id', '?')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, started {holder.get('started_at', '?')})"
    )


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextmanager
def workdir_lock(
    workdir: Path, run_id: str, timeout_s: float = 0.0, poll_s: float = 0.5, say: Callable[[str], None] | None = None
) -> Iterator[dict]:
    """Hold the workdir's run lock for the block; yields the holder record written into it.

    A held lock is waited for up to `timeout_s` seconds (one visible message, via `say`, default
    stderr); after that `WorkdirBusy` names the holder. The lock goes with this process: if it is
    killed, the next run takes the workdir over at once.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    fd = os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + max(0.0, timeout_s)
        announced = False
        while not _try_lock(fd):
            holder = read_holder(workdir)
            if time.monotonic() >= deadline:
                waited = f" after waiting {timeout_s:g} s" if timeout_s > 0 else ""
                raise WorkdirBusy(
                    f"{workdir}: the workdir is in use by {describe(holder)}{waited}; wait for it to "
                    f"finish, or raise lock_timeout_s (config) / --lock-timeout to wait longer "
                    f"(lock file {lock_path(workdir)})"
                )
            if not announced:
                say(
                    f"waiting for the workdir {workdir}: in use by {describe(holder)} "
                    f"(up to {timeout_s:g} s, lock_timeout_s)"
                )
                announced = True
            time.sleep(poll_s)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": run_id,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)  # a released lock names nobody
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(workdir: Path) -> dict | None:
    """The holder if a live run holds the workdir now, else None (never blocks, takes nothing)."""
    path = lock_path(workdir)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return read_holder(workdir) or {}
    finally:
        os.close(fd)
