"""Catch SIGUSR1/SIGTERM from the first moment of a long stage, before TensorFlow loads.

SLURM's time-limit warning (USR1) can come while `import tensorflow` still runs (seconds); with
the default action the process would die (exit 138) with no checkpoint and the job would be
FAILED instead of requeued. `catch_early` records such a signal; the stage's stop flag
(hpcffn.ffn.training.StopFlag) takes it over when it starts, saves and exits 75.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_early: list[int] = []


def _record(signum, frame) -> None:
    _early.append(signum)


def catch_early() -> None:
    """Install the recording handler for USR1/TERM (main thread only)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


def take_early() -> int | None:
    """The first stop signal received before the stage's own handler, if any (and forget it)."""
    first = _early[0] if _early else None
    _early.clear()
    return first
