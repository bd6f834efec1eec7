"""state.json's journal: one line per sbatch call, appended while `submit` runs.

A 100,000-tile submit is hundreds of sbatch calls (arrays split under MaxArraySize) and
state.json is tens of MB: rewriting it after every call made submit quadratic. Instead each
new submission is appended here as one JSON line (fsynced before the next sbatch), so a submit
killed half-way forgets nothing it queued, and state.json is rewritten once, at the end
(state.save_state, which then removes the journal). Every reader folds the journal in
(state.load_state). This module only moves lines; state.py turns them into Submissions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def path_of(state_path: Path) -> Path:
    """`state.json.journal`, beside the state file."""
    return state_path.with_name(state_path.name + ".journal")


def append(state_path: Path, line: str) -> None:
    """Append one record (a JSON object on one line) and fsync it before returning.

    A record a killed writer left half-written has no newline; one is added first so the new
    record starts on its own line (the torn one is skipped by `read`).
    """
    path = path_of(state_path)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and _last_byte(path, size) != b"\n"
        data = (b"\n" if torn else b"") + line.encode("utf-8") + b"\n"
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        sync_dir(path.parent)  # the new file's name survives a crash too


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1)


def read(state_path: Path) -> list[dict]:
    """The journal's complete records, oldest first ([] without a journal).

    A line without its newline (being written now, or torn by a killed writer) and a line that
    is not a JSON object (a torn record followed by a later one) are skipped.
    """
    try:
        data = path_of(state_path).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: incomplete or empty
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def remove(state_path: Path) -> None:
    """Delete the journal once state.json holds its records."""
    path_of(state_path).unlink(missing_ok=True)


def sync_dir(folder: Path) -> None:
    """fsync a directory, so renames and new files in it are on disk (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
