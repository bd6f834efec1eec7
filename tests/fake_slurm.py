"""A stand-in SLURM for tests: handed to submit, status, cancel and check as their scheduler.

`FakeSlurm(tools=...)` answers each client tool from a table (the others are not installed),
so the real query logic runs on canned output; `queue=` answers queries straight from a
function; sbatch (with `job_ids=`) and scancel are recorded instead of run. What it is not
told about goes to this machine's tools, as `Slurm` does (stand-in scripts on PATH).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

from hpcffn.jobs.slurm import Slurm, TaskInfo

# A tool's answer: (exit code, stdout, stderr), or an exception it raises (e.g. SchedulerNotAnswering).
Answer = tuple[int, str, str] | Exception


class FakeSlurm(Slurm):
    def __init__(self, tools: dict[str, Answer] | None = None,
                 queue: Callable[[list[str]], dict[str, TaskInfo]] | None = None,
                 job_ids: Iterator[str] | None = None):
        self.tools = tools
        self.queue = queue
        self.job_ids = job_ids
        self.asked: list[list[str]] = []  # the commands run through the table
        self.submitted: list[list[str]] = []  # sbatch command lines (with job_ids)
        self.cancelled: list[str] = []  # ids given to scancel

    def which(self, name: str) -> str | None:
        if self.tools is None:
            return super().which(name)
        return f"/fake/{name}" if name in self.tools else None

    def run(self, args: list[str], cwd=None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        if self.tools is None:
            return super().run(args, cwd, check, timeout)
        self.tool(args[0])  # not in the table: not installed
        self.asked.append(list(args))
        answer = self.tools[args[0]]
        if isinstance(answer, Exception):
            raise answer
        return subprocess.CompletedProcess(args, *answer)

    def query(self, ids, sources=("squeue", "sacct", "scontrol"), problems=None) -> dict[str, TaskInfo]:
        if self.queue is None:
            return super().query(ids, sources, problems)
        return self.queue(list(ids))

    def sbatch(self, cmd: list[str], cwd) -> str:
        if self.job_ids is None:
            return super().sbatch(cmd, cwd)
        self.submitted.append(list(cmd))
        return next(self.job_ids)

    def scancel(self, ids: list[str]) -> None:
        self.cancelled += ids
