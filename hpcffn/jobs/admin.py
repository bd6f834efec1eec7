"""`hpcffn cancel` and `hpcffn logs`: act on what state.json says was submitted.

Cancel only touches this experiment's own job ids (never a user's other jobs); logs are
found from SLURM's record, the local runner's record, or the script's `#SBATCH --output`
pattern expanded with the job id, in that order.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.core.units import infer_task_tiles
from hpcffn.jobs import slurm
from hpcffn.jobs.observe import Category
from hpcffn.jobs.slurm import expand_pattern, sbatch_options
from hpcffn.jobs.state import load_state
from hpcffn.jobs.submit import (
    TaskView,
    alive_ids,
    check_filters,
    job_tasks,
    observe,
    selected_tasks,
    unit_groups,
    unit_of,
)


def cancel(plan: Plan, stages: list[str] | None = None, groups: list[str] | None = None, echo=print,
           scheduler: slurm.Slurm | None = None) -> list[str]:
    """scancel the alive tasks of the selected jobs (on `scheduler`, this machine's SLURM by
    default); stop a local runner working on them."""
    check_filters(plan, stages, groups)
    scheduler = scheduler or slurm.Slurm()
    state = load_state(plan.layout.state)
    views = observe(plan, state, query=scheduler.query)
    queued: list[TaskView] = []
    runners: set[int] = set()
    elsewhere: set[str] = set()
    host = socket.gethostname()
    of_unit = unit_groups(plan) if groups else None
    for job in plan.jobs:
        keep = set(selected_tasks(plan, job, stages, groups, of_unit))
        for v in views[job.name]:
            if v.task in keep and v.category is Category.ALIVE and v.sub is not None:
                if not v.sub.local:
                    queued.append(v)
                elif v.sub.runner_host and v.sub.runner_host != host:
                    elsewhere.add(f"{v.sub.runner_host} (pid {v.sub.runner_pid})")
                elif v.sub.runner_pid:
                    runners.add(v.sub.runner_pid)
    # A whole array (or piece of one) by its job id, so 100,000 tasks stay one short scancel line.
    ids = alive_ids(queued)
    if ids:
        scheduler.scancel(ids)
        echo(f"cancelled {len(queued)} task(s): {' '.join(ids)}")
    for pid in runners:
        try:
            os.kill(pid, signal.SIGTERM)
            echo(f"stopped the local runner (pid {pid})")
        except ProcessLookupError:
            pass
    for where in sorted(elsewhere):
        echo(f"a local run is working on host {where}: stop it there (`hpcffn cancel` on that host)")
    if not ids and not runners and not elsewhere:
        echo("nothing to cancel: no selected job is pending or running")
    return ids


def _match(plan: Plan, stage: str, which: str | None) -> list[tuple[str, int | None]]:
    jobs = [j for j in plan.jobs if j.stage == stage]
    if not jobs:
        known = ", ".join(sorted({j.stage for j in plan.jobs}))
        raise HpcffnError(f"no {stage!r} job in {plan.layout.plan}; stages planned: {known}")
    out = []
    tile_groups = {x.name: x.group for x in plan.tiles}
    for job in jobs:
        # a task of several tiles (tiles_per_task) is found by any of its tiles too
        members = infer_task_tiles(plan, job)
        for t in job_tasks(job):
            unit = unit_of(job, t)
            tile_group = tile_groups.get(unit)
            if which is None or which in (unit, job.group, tile_group) or (job.array and which == str(t)) \
                    or which in members.get(unit, ()):
                out.append((job.name, t))
    if not out:
        raise HpcffnError(f"no {stage} task for {which!r}: give a group, tile or volume name of the plan (see `hpcffn status --json`)")
    return out


def _log_of(plan: Plan, job_name: str, sub, task, info=None) -> list[Path]:
    """Log files of one submission's task: SLURM's or the local runner's record, else the
    script's --output pattern expanded with the submission's job id."""
    if info is not None and info.log and "%" not in info.log and Path(info.log).is_file():
        return [Path(info.log)]
    local = sub.local_tasks.get(str(task if task is not None else 0)) if sub.local else None
    if local is not None and local.log and Path(local.log).is_file():
        return [Path(local.log)]
    job = plan.job(job_name)
    script = plan.layout.root / job.script
    opts = sbatch_options(script) if script.is_file() else {}
    pattern = opts.get("output", "slurm-%j.out")
    name = opts.get("job-name", job.name)
    base = sub.job_id
    if "%j" in pattern and task is not None:
        pattern = pattern.replace("%j", "*")
    # %a is SLURM's task id: within a piece of a split array, the task minus the piece's offset.
    path = expand_pattern(pattern, name, base, task - sub.array_offset if task is not None else None)
    if not os.path.isabs(path):
        path = str(plan.layout.root / path)
    return [Path(p) for p in sorted(glob.glob(path))]


def log_paths(plan: Plan, stage: str, which: str | None, scheduler: slurm.Slurm | None = None) -> list[Path]:
    """Log files of every run of the matching tasks, oldest first: each submission (a resume
    is a new job id and log); a requeue appends to its job's log (--open-mode=append). SLURM's
    record (`scheduler`) names a log moved by hand; without an answer the script's pattern does."""
    wanted = _match(plan, stage, which)
    state = load_state(plan.layout.state)
    views = observe(plan, state, query=_quiet(scheduler or slurm.Slurm()))
    paths: list[Path] = []
    for job_name, task in wanted:
        newest = next((v for v in views[job_name] if v.task == task and v.sub is not None), None)
        for sub in state.of_job(job_name):
            if task is not None and sub.tasks is not None and task not in sub.tasks:
                continue
            info = newest.info if newest is not None and newest.sub is sub else None
            paths += [p for p in _log_of(plan, job_name, sub, task, info) if p not in paths]
    if not paths:
        raise HpcffnError(
            f"no log yet for {stage}{' ' + which if which else ''}: it has not started (see `hpcffn status`)"
        )
    return paths


def _quiet(scheduler: slurm.Slurm):
    """`scheduler.query`, answering nothing where SLURM does not answer."""
    def query(ids):
        try:
            return scheduler.query(ids)
        except HpcffnError:
            return {}

    return query
