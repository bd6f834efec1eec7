"""Ends the local runner's task process groups when the runner dies, however it dies.

`hpcffn run` starts one reaper (in its own session) and tells it on a pipe which task groups
are alive ("+PGID" / "-PGID"). A runner killed with SIGKILL cannot stop its tasks itself; the
kernel then closes the pipe, and the reaper sends the groups that were still running SIGTERM
(train/infer scripts checkpoint on it) and SIGKILL 30 s later. A task left running would go on
writing its unit beside the one `hpcffn run --resume` starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

GRACE_S = 30.0


class Reaper:
    """The runner's side: start the reaper, name the task groups as they start and end."""

    def __init__(self):
        self._lock = threading.Lock()
        # Not the runner's stdout/stderr: a caller reading them to EOF would wait for the reaper too.
        self._proc = subprocess.Popen([sys.executable, "-m", "hpcffn.jobs.reaper"], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                      start_new_session=True)

    def _say(self, line: str) -> None:
        with self._lock:
            try:
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):  # the reaper is gone: nothing more to tell
                pass

    def watch(self, pgid: int) -> None:
        self._say(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._say(f"-{pgid}")

    def close(self) -> None:
        """Normal end of the runner: every task has ended, so the reaper has nothing to do."""
        with self._lock:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass
        self._proc.wait()


def end_groups(groups: set[int], grace_s: float = GRACE_S) -> None:
    """SIGTERM every group, then SIGKILL the ones still alive after `grace_s`."""
    alive = set()
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
            alive.add(pgid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {g for g in alive if _exists(g)}
    for pgid in alive:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # outlive the runner's terminal and its group
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line[:1] in "+-" and line[1:].isdigit():
            (groups.add if line[0] == "+" else groups.discard)(int(line[1:]))
    end_groups(groups)


if __name__ == "__main__":
    main()
