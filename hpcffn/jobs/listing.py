"""Existence checks by directory listing: one `listdir` per folder instead of a stat per file.

Status and resume ask, for every task, whether its success marker and output exist. At
100,000 tiles that is hundreds of thousands of stats, each a metadata round trip on a
parallel file system; listing each folder once answers them all from a set.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hpcffn.core.errors import HpcffnError


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

    def each(self, pattern: Callable[[str], str | None], units: list[str]) -> list[bool]:
        """[exists(pattern(u)) for u in units] (None: False); a `path_pattern` whose units all
        name files of one folder costs one set lookup per unit (status: 500,000 of them)."""
        if isinstance(pattern, _Joined) and "/" not in pattern.tail and "/" not in "".join(units):
            folder, _, head = pattern.head.rpartition("/")
            names, tail = self.names(folder or "."), pattern.tail
            return [head + u + tail in names for u in units] if names else [False] * len(units)
        return [path is not None and self.exists(path) for path in map(pattern, units)]


def path_pattern(path_of: Callable[[str], Path | None]) -> Callable[[str], str | None]:
    """unit -> str(path_of(unit)), asked of the layout once and then built by concatenation.

    hpcffn/core/layout.py stays the one place that knows the paths; status and resume only
    avoid building 100,000s of Path objects (most of their time at 100,000 tiles).
    """
    def direct(unit: str) -> str | None:
        path = path_of(unit)
        return None if path is None else str(path)

    try:
        samples = [path_of(probe) for probe in ("\0", "\1")]
    except (HpcffnError, KeyError, ValueError):  # the path needs a real unit (a tile's volume)
        return direct
    if samples[0] is None:
        return lambda unit: None
    head, found, tail = str(samples[0]).partition("\0")
    if found and str(samples[1]) == head + "\1" + tail:
        return _Joined(head, tail)
    if not found and str(samples[1]) == head:
        return lambda unit: head  # one path for every unit (evaluate's report)
    return direct


class _Joined:
    """unit -> head + unit + tail (what `path_pattern` found the layout's paths to be)."""

    __slots__ = ("head", "tail")

    def __init__(self, head: str, tail: str) -> None:
        self.head, self.tail = head, tail

    def __call__(self, unit: str) -> str:
        return self.head + unit + self.tail
