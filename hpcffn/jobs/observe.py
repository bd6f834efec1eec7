"""What became of every task of a plan's jobs: state.json, then SLURM, then success markers.

Each task is put in one of six categories: done, alive, failed, lost (SLURM forgot it and no
marker certifies it finished: resubmitted like a failure), never (not submitted, or submitted
for what a re-plan has since changed) or missing (it finished but its output is gone: run again). `observe_jobs`
keeps each job's tasks as columns (`JobTasks`), which `hpcffn status` counts as they are;
`observe` turns them into one `TaskView` per task for submit, resume, cancel and the local
runner. A 100,000-tile plan has half a million tasks (joins, relabel and the pyramid add about
four per tile to infer's one), so the per-task work here is a few lookups, and status builds
no object per task.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from hpcffn.core.plan_model import JobPlan, Plan
from hpcffn.core.units import read_fingerprints
from hpcffn.jobs import slurm
from hpcffn.jobs.listing import Listing, path_pattern
from hpcffn.jobs.state import State, Submission
from hpcffn.stages.markers import certifies

Task = int | None  # array task id, or None for a plain job


class Category(StrEnum):
    """What became of a task (see the module docstring).

    The value is what `hpcffn status --json`, the report and state words show; members hash as
    their value, so a count keyed by members reads the same as one keyed by the words.
    """

    DONE = "done"
    ALIVE = "alive"
    FAILED = "failed"
    LOST = "lost"
    NEVER = "never"
    MISSING = "missing"

    __hash__ = str.__hash__


@dataclass
class TaskView:
    """One unit of work of one job, with what is known about it."""

    job: str
    task: Task
    unit: str
    sub: Submission | None
    info: slurm.TaskInfo | None
    category: Category

    @property
    def slurm_id(self) -> str | None:
        return self.sub.task_id(self.task) if self.sub else None


@dataclass
class JobTasks:
    """One job's tasks as columns: position i of each list is task i."""

    job: JobPlan
    tasks: list[Task]
    units: list[str]
    subs: list[Submission | None]  # the newest submission that covers the task (None: never)
    infos: list[slurm.TaskInfo | None]  # what SLURM (or the local runner) says about it
    categories: list[Category]

    def views(self) -> list[TaskView]:
        name = self.job.name
        return [TaskView(name, *row) for row in zip(self.tasks, self.units, self.subs, self.infos, self.categories)]


def output_of(plan: Plan, stage: str):
    """unit -> the file a finished unit of `stage` leaves, per hpcffn/core/layout.py (train: the
    checkpoint at max_steps; relabel and pyramid write chunks into the volume's store: their marker)."""
    lay = plan.layout
    return {
        "convert": lay.converted_volume,
        "partitions": lay.partitions,
        "coordinates": lay.coordinates,
        "train": lambda g: lay.train_dir(g) / f"ckpt-{plan.ffn.training.max_steps}.index",
        "infer": lambda t: plan.infer_output("infer", t),
        "reverse": lambda t: plan.infer_output("reverse", t),
        "consensus": lay.segmentation,
        "joins": lay.joins,
        "resolve": lay.relabelling,
        "relabel": lambda t: lay.marker("relabel", t),
        "pyramid": lambda b: lay.marker("pyramid", b),
        "evaluate": lambda _u: lay.evaluation_report,
    }.get(stage, lambda _u: None)


def job_tasks(job: JobPlan) -> list[Task]:
    return list(range(len(job.units))) if job.array else [None]


def unit_of(job: JobPlan, task: Task) -> str:
    return job.units[task if task is not None else 0]


def observe(plan: Plan, state: State, query=None) -> dict[str, list[TaskView]]:
    """Categorise every task of every job of the plan from state.json, SLURM and markers."""
    return {name: tasks.views() for name, tasks in observe_jobs(plan, state, query).items()}


def observe_jobs(plan: Plan, state: State, query=None) -> dict[str, JobTasks]:
    """`observe` as columns per job (`query`: ids -> TaskInfo, this machine's Slurm().query by default)."""
    subs_of: dict[str, list[Submission]] = {}
    for sub in state.submissions:
        subs_of.setdefault(sub.job, []).append(sub)
    newest = {j.name: _newest(subs_of.get(j.name, []), j.array) for j in plan.jobs}
    ids = {name: _slurm_ids(pairs) for name, pairs in newest.items()}
    asked = [i for per in ids.values() for i in per.values()]
    infos: dict[str, slurm.TaskInfo] = (query or slurm.Slurm().query)(asked) if asked else {}
    runners: dict[str, bool] = {}
    listing = Listing()
    return {job.name: _columns(plan, job, newest[job.name], ids[job.name], infos, listing, runners)
            for job in plan.jobs}


def _newest(subs: list[Submission], array: bool) -> list[tuple[Submission, list[Task]]]:
    """Each submission of a job (`subs`: oldest first) with the tasks it is the newest one of:
    [None] (a plain job's last submission, or an array's last one submitted whole) or array
    task ids. Newest first, so a job submitted once (most) costs a copy of its task list."""
    out: list[tuple[Submission, list[Task]]] = []
    whole = [s for s in subs if not array or s.tasks is None]
    if whole:
        out.append((whole[-1], [None]))
    if not array:
        return out
    taken: set[int] = set()
    listed = [s for s in subs if s.tasks is not None]
    for k, sub in enumerate(reversed(listed)):
        out.append((sub, list(sub.tasks) if not taken else [t for t in sub.tasks if t not in taken]))
        if k < len(listed) - 1:
            taken.update(sub.tasks)
    return out


def _slurm_ids(newest: list[tuple[Submission, list[Task]]]) -> dict[Task, str]:
    """task -> its SLURM id in its newest submission (`Submission.task_id`), SLURM submissions only:
    one prefix per submission, the offset subtracted only where it is not 0."""
    out: dict[Task, str] = {}
    for sub, mine in newest:
        if sub.local or not mine:
            continue
        if mine == [None]:
            out[None] = sub.job_id
            continue
        prefix, offset = f"{sub.job_id}_", sub.array_offset
        out.update(zip(mine, map(prefix.__add__, map(str, mine)) if not offset else
                       (f"{prefix}{t - offset}" for t in mine)))
    return out


def _columns(plan: Plan, job: JobPlan, newest: list[tuple[Submission, list[Task]]], ids: dict[Task, str],
             infos: dict[str, slurm.TaskInfo], listing: Listing, runners: dict[str, bool]) -> JobTasks:
    """One job's columns: lookups mapped over the tasks, the rest worked out once per
    submission and once per SLURM record (one pending array record stands for 1000s of tasks)."""
    tasks = job_tasks(job)
    n = len(tasks)
    units = job.units if job.array else [unit_of(job, None)]
    subs: list[Submission | None] = [None] * n
    for sub, mine in newest:
        where = _positions(mine, job.array, n)
        if where and where == list(range(where[0], where[0] + len(where))):  # a whole array or piece
            subs[where[0]:where[0] + len(where)] = [sub] * len(where)
        else:
            for i in where:
                subs[i] = sub
    found: list[slurm.TaskInfo | None] = list(map(infos.get, map(ids.get, tasks)))
    for sub, mine in newest:
        where = _positions(mine, job.array, n)
        recorded = list(map(sub.units.get, map(str, where))) if sub.units and where else []
        if recorded and recorded != list(map(units.__getitem__, where)):
            for i, unit in zip(where, recorded):
                if unit is not None and unit != units[i]:
                    subs[i] = found[i] = None  # submitted for another unit at this index, before a re-plan
        if sub.stale:
            stale = set(sub.stale)
            for i in where:
                if subs[i] is sub and (tasks[i] if tasks[i] is not None else 0) in stale:
                    subs[i] = found[i] = None  # submitted for what this unit meant before a re-plan
        if sub.local:
            for i in where:
                if subs[i] is sub:
                    found[i] = _local_info(sub, tasks[i], runners)
    keys = list(map(id, found))
    category = {k: _category(info) for k, info in dict(zip(keys, found)).items() if info is not None}
    cats = list(map(category.get, keys))
    if None in cats:  # tasks without a record: never submitted, or forgotten by SLURM
        marker = path_pattern(lambda u: plan.layout.marker(job.stage, u))
        fps: list[str] | None = None
        for i, cat in enumerate(cats):
            if cat is None:
                if subs[i] is None:
                    cats[i] = Category.NEVER
                    continue
                path = marker(units[i])
                if listing.exists(path):  # read only where it exists: does it certify this unit?
                    fps = fps if fps is not None else (read_fingerprints(plan.workdir, job.name) or [])
                    certified = certifies(Path(path), fps[i] if i < len(fps) else None)
                else:
                    certified = False
                cats[i] = Category.DONE if certified else Category.LOST
    if Category.DONE in cats:  # finished, by its record or marker: is its output still there?
        exists = listing.each(path_pattern(output_of(plan, job.stage)), units)
        cats = [Category.MISSING if c is Category.DONE and not e else c for c, e in zip(cats, exists)]
    return JobTasks(job, tasks, units, subs, found, cats)


def _positions(mine: list[Task], array: bool, n: int) -> list[int]:
    """Positions in the job's columns of a submission's tasks (`_newest`)."""
    if mine == [None]:
        return [] if array else [0]  # an array submitted whole covers none of its tasks by number
    if not array:
        return []
    if mine and (min(mine) < 0 or max(mine) >= n):
        return [t for t in mine if 0 <= t < n]  # tasks of a bigger array, before a re-plan
    return mine


def _category(info: slurm.TaskInfo) -> Category:
    return Category.DONE if info.state in slurm.DONE_STATES else Category.ALIVE if info.alive else Category.FAILED


def _local_info(sub: Submission, task: Task, alive: dict[str, bool]) -> slurm.TaskInfo | None:
    """The local runner's record of a task; `alive` caches runner_alive per submission."""
    rec = sub.local_tasks.get(str(task if task is not None else 0))
    if rec is None:
        return None
    state = rec.state
    if state in ("RUNNING", "PENDING") and sub.job_id not in alive:
        alive[sub.job_id] = runner_alive(sub)
    if state in ("RUNNING", "PENDING") and not alive[sub.job_id]:
        state, reason = "CANCELLED", "LocalRunnerGone"
    else:
        reason = rec.reason
    return slurm.TaskInfo(id=sub.task_id(task), state=state, reason=reason, exit_code=rec.exit_code,
                          restarts=rec.restarts, source="local", log=rec.log)


def runner_alive(sub: Submission) -> bool:
    """Whether the local runner that made `sub` still runs.

    Pids are reused, so on this host the pid must also be an hpcffn process; a runner on
    another host (shared workdir) cannot be seen from here and its records stand.
    """
    pid = sub.runner_pid
    if not pid:
        return False
    if sub.runner_host and sub.runner_host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return b"hpcffn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc to ask: trust the pid
