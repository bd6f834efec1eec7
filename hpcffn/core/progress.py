"""The one progress bar of hpcffn's long loops: convert's slices, coordinates' records, the
local runner's tasks.

A bar is for a person at a terminal; batch jobs log to files, so a disabled bar makes no rich
objects and draws nothing. Callers advance it from any thread (the local runner's job threads
do): rich's Progress takes its own lock.
"""

from __future__ import annotations

import sys
from typing import Self


class ProgressBar:
    """One count on a rich bar: its label, the bar, done/total, and the time left (or taken)."""

    def __init__(self, label: str, total: float, enabled: bool | None = None, elapsed: bool = False):
        """`enabled` None: when stderr is a terminal. `elapsed`: show the time taken instead of the
        time left (for work whose parts differ too much for an estimate, such as whole jobs)."""
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar = None
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), clock)
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> Self:
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._bar:
            self._bar.stop()
        return False

    def advance(self, n: float = 1) -> None:
        if self._bar:
            self._bar.advance(self._task, n)

    def describe(self, label: str) -> None:
        """Show `label` in front of the bar from now on (the runner names the job it starts)."""
        if self._bar:
            self._bar.update(self._task, description=label)
