"""Existence checks by directory listing: one `listdir` per folder instead of a stat per file.

Status and resume ask, for every task, whether its success marker and output exist. At
100,000 tiles that is hundreds of thousands of stats, each a metadata round trip on a
parallel file system; listing each folder once answers them all from a set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class Listing:
    """Remembers the names in each folder it was asked about (for one status/submit run)."""

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str]] = {}

    def names(self, folder: str | Path) -> frozenset[str]:
        key = str(folder)
        names = self._names.get(key)
        if names is None:
            try:
                names = frozenset(os.listdir(key))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            self._names[key] = names
        return names

    def exists(self, path: str | Path) -> bool:
        folder, _, name = str(path).rpartition("/")
        return name in self.names(folder or ".")


def path_pattern(path_of: Callable[[str], Path | None]) -> Callable[[str], str | None]:
    """unit -> str(path_of(unit)), asked of the layout once and then built by concatenation.

    hpcffn/core/layout.py stays the one place that knows the paths; status and resume only
    avoid building 100,000s of Path objects (most of their time at 100,000 tiles).
    """
    sample = path_of("\0")
    if sample is None:
        return lambda unit: None
    head, found, tail = str(sample).partition("\0")
    if not found:  # one path for every unit (evaluate's report)
        return lambda unit: head
    return lambda unit: head + unit + tail
