"""state.json: what was submitted for an experiment, so status, resume and cancel know job ids.

One record per submission (one sbatch call, or one local-runner run of a job), newest last,
with the script's sha256 at submission time, the array task ids it covers, the command line
and (for local runs) each task's outcome. The file is rewritten atomically (temp + rename);
writers take an fcntl lock on a side file so two `hpcffn submit` runs cannot interleave.
`submit` does not rewrite it per sbatch call: it appends each new submission to a journal
beside it (journal.py), which `load_state` folds in and `save_state` folds away.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpcffn.core.atomic import atomic_write_text
from hpcffn.core.errors import HpcffnError
from hpcffn.jobs import journal

STATE_FORMAT = 1


class LocalTask(BaseModel):
    """Outcome of one task run by the local runner (SLURM-like state names)."""

    model_config = ConfigDict(extra="ignore")
    state: str = "PENDING"
    reason: str = ""
    exit_code: int | None = None
    restarts: int = 0
    start: str | None = None
    end: str | None = None
    log: str = ""


class Submission(BaseModel):
    """One sbatch call (or one local run) of one job of the plan."""

    model_config = ConfigDict(extra="ignore")
    job: str
    job_id: str = Field(pattern=r"^L?\d+$")  # SLURM id, or "L<n>" for local runs
    submitted: str
    sha256: str
    tasks: list[int] | None = None  # array task ids covered (positions in the job's units); None for a plain job
    # A piece of an array split for MaxArraySize: SLURM's task id is the task minus this offset.
    array_offset: int = 0
    command: list[str] = Field(default_factory=list)
    # Unit name per task ("0" for a plain job) when submitted: after a re-plan that changed the
    # grid, an array index can name another tile, and the old run does not count for it.
    units: dict[str, str] = Field(default_factory=dict)
    local: bool = False
    runner_pid: int | None = None
    runner_host: str | None = None  # where runner_pid lives (a workdir may be shared between hosts)
    local_tasks: dict[str, LocalTask] = Field(default_factory=dict)
    # Tasks ("0" for a plain job) whose unit a later re-plan changed (another box, other
    # parameters or inputs: plan/fingerprints.py): this submission no longer counts for them.
    stale: list[int] = Field(default_factory=list)

    def task_id(self, task: int | None) -> str:
        """SLURM id of one task of this submission ("123_4", or "123" for a plain job)."""
        return self.job_id if task is None or self.tasks is None else f"{self.job_id}_{task - self.array_offset}"


class State(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: int = STATE_FORMAT
    submissions: list[Submission] = Field(default_factory=list)

    def of_job(self, job: str) -> list[Submission]:
        return [s for s in self.submissions if s.job == job]

    def next_local_id(self) -> str:
        n = sum(1 for s in self.submissions if s.local)
        return f"L{n + 1}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def recorded(path: Path) -> bool:
    """Whether anything was ever submitted from this workdir (state.json, or its journal)."""
    return path.is_file() or journal.path_of(path).is_file()


def load_state(path: Path) -> State:
    """Read state.json, plus the journal of a submit still running or killed; none is an empty state.

    The journal is read first: a submit that finishes in between has put its records into
    state.json by then (duplicates are dropped), so nothing is missed either way.
    """
    pending = journal.read(path)
    state = _read_file(path) if path.exists() else State()
    if pending:
        seen = {_key(s) for s in state.submissions}
        for raw in pending:
            try:
                sub = Submission.model_validate(raw)
            except ValidationError:
                continue  # not a record of ours (journal.read already skips torn lines)
            if _key(sub) not in seen:
                seen.add(_key(sub))
                state.submissions.append(sub)
    return state


def _key(sub: Submission) -> tuple[str, str, str]:
    return sub.job, sub.job_id, sub.submitted


def _read_file(path: Path) -> State:
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != STATE_FORMAT:
            raise HpcffnError(
                f"{path} has state format {raw.get('format')!r}, this hpcffn reads {STATE_FORMAT}: "
                "move it aside and check the queue with squeue"
            )
        return State.model_validate(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, ValidationError) as exc:
        raise HpcffnError(
            f"{path} is not a readable hpcffn state file ({type(exc).__name__}); "
            "move it aside (job ids in it are lost) and re-run"
        ) from None


def save_state(path: Path, state: State) -> None:
    """Write the whole state atomically; the journal's records are in it now, so it goes."""
    atomic_write_text(path, state.model_dump_json(indent=1) + "\n")
    if journal.path_of(path).exists():
        journal.sync_dir(path.parent)  # the rename is on disk before the journal is gone
        journal.remove(path)


def record(path: Path, sub: Submission) -> None:
    """Make one new submission durable at the cost of its own size: a journal line, not a rewrite.

    For writers holding `locked(path)` that `save_state` once when they are done.
    """
    journal.append(path, sub.model_dump_json())


@contextmanager
def locked(path: Path, wait: bool = False):
    """Hold an exclusive lock on `<state>.lock` so two submits cannot run at once."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise HpcffnError(
                f"another hpcffn submit/run holds {lock_path}: wait for it to finish (or, if none is running, retry)"
            ) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def updating(path: Path):
    """Load, let the block change, and save the state under the lock (for short updates)."""
    lock_path = path.with_name(path.name + ".update.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = load_state(path)
        yield state
        save_state(path, state)
    finally:
        os.close(fd)
