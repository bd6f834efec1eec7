"""Exclusive locks on a lock file, naming their holder, so one writer owns a unit at a time.

`fcntl.flock` is released by the kernel when the holder dies (even kill -9), so a stale lock
file never blocks anyone; the file's text (host, pid, SLURM job id) only names the holder in
the error a second writer gets. flock is node-local on NFS without lock support and on Lustre
mounted without `-o flock` (see docs/guarantees.md): the holder's host in the message is what
tells a user which node to look at.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from hpcffn.core.errors import HpcffnError


def holder_text() -> str:
    """Who this process is: host, pid and SLURM job (array task) id, as one line."""
    job = os.environ.get("SLURM_JOB_ID")
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        job = f"{job} ({array}_{task})"
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"host {socket.gethostname()}, pid {os.getpid()}, SLURM job {job or 'none'}, since {started}"


@contextmanager
def exclusive(lock_path: str | Path, what: str, fix: str):
    """Hold an exclusive flock on `lock_path` for the block; refuse at once if another holds it.

    `what` names the thing locked ("train unit g0"); `fix` says what the user can do.
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise HpcffnError(f"cannot lock {lock_path} ({exc.strerror}): {fix}") from None
            holder = _read_holder(fd) or "holder unknown"
            raise HpcffnError(f"{what} is being written by another run ({holder}; lock {lock_path}): {fix}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (holder_text() + "\n").encode(), 0)
        yield
        os.ftruncate(fd, 0)  # released: name no holder
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
