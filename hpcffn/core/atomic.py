"""Atomic file writes: temp file in the same directory, fsync, rename.

Nothing a user made (scripts, checkpoints, outputs, state) is ever half-written.
"""

from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds.

    Use for writers that need a filename (h5py, TFRecord writers). The temp file keeps
    `suffix` so libraries that look at extensions still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file 0600; give it the mode a plain open() would (lab members
    # sharing a workdir must be able to read plans, outputs and state).
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` atomically; a failed write names `path` (the OS error names no file)."""
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            from hpcffn.core.errors import DiskFull

            raise DiskFull(f"no space left on the device of {Path(path).parent} while writing {Path(path).name}: "
                           "free space there and run again (the old file was kept)") from None
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def remove_stale_temporaries(path: str | Path, extra_prefixes: tuple[str, ...] = ()) -> list[Path]:
    """Delete the temp files `atomic_path(path)` left behind when a writer was killed (kill -9).

    Call only while holding the unit's lock (hpcffn.core.locks), so no live writer owns them.
    `extra_prefixes`: other temp names of this one output (files or folders beside it).
    """
    import re
    import shutil

    path = Path(path)
    # mkstemp's names: prefix, 8 random characters, suffix
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    if not path.parent.is_dir():
        return []
    removed = []
    for entry in path.parent.iterdir():
        name = entry.name
        if pattern.match(name) or any(name.startswith(p) for p in extra_prefixes):
            if _live_writer(name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _live_writer(name: str) -> bool:
    """`.NAME.old-<pid>` (an output moved aside while its replacement goes in) of a process still
    running here is that process's to remove."""
    import re

    m = re.search(r"\.old-(\d+)$", name)
    if not m or int(m.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True
