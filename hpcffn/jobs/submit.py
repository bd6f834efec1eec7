"""Submit a plan's scripts to SLURM in dependency order; resume only what did not finish.

The scripts are submitted as they are on disk (hand edits honoured). Every job/array task
is put in one of five categories from state.json + SLURM (+ markers when SLURM has forgotten
it): done, alive, failed, lost (SLURM forgot it and no marker says it finished: resubmitted
like a failure) or never (not submitted). `submit` sends what was never submitted;
`submit --resume` also what failed, was cancelled or timed out (array: only those task ids),
chaining each job with `--dependency=afterok:...` on its upstream jobs' alive or new
submissions and `--kill-on-invalid-dep=yes`. Running, pending and completed work is never
resubmitted, so running `submit` twice submits nothing the second time. (The categories are
worked out in observe.py.)
"""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import JobPlan, Plan
from hpcffn.core.stage_table import CONSENSUS_STEPS, STAGES
from hpcffn.jobs import limits, pretest, slurm

# observe and its views live in observe.py; submit, admin and the local runner import them from here too.
from hpcffn.jobs.observe import Category, Task, TaskView, job_tasks, observe, unit_of
from hpcffn.jobs.state import (
    Submission,
    load_state,
    locked,
    now,
    record,
    recorded,
    save_state,
)
from hpcffn.stages.markers import is_done


def task_units(job: JobPlan, tasks: list[Task]) -> dict[str, str]:
    """What Submission.units records: the unit name of each task."""
    return {str(t if t is not None else 0): unit_of(job, t) for t in tasks}


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def topo_order(plan: Plan) -> list[JobPlan]:
    """Jobs ordered so that every job comes after the jobs it depends on (plan order otherwise)."""
    names = {j.name for j in plan.jobs}
    done: list[JobPlan] = []
    placed: set[str] = set()
    pending = list(plan.jobs)
    while pending:
        progress = False
        for job in list(pending):
            if all(d.job in placed or d.job not in names for d in job.depends_on):
                done.append(job)
                placed.add(job.name)
                pending.remove(job)
                progress = True
        if not progress:
            cycle = ", ".join(j.name for j in pending)
            raise HpcffnError(f"plan.json: jobs {cycle} depend on each other in a cycle; re-run `hpcffn plan`")
    return done


def check_replan(old: Plan, new: Plan, query=None) -> None:
    """Refuse a re-plan that changes what queued tasks work on.

    Scripts read plan.json when they start, so a pending task i of a job whose units changed
    would work on another tile or group than the one it was submitted for. Only jobs that are
    still pending or running (per state.json and SLURM) matter; finished work is safe.
    """
    if not recorded(old.layout.state):
        return
    new_units = {j.name: j.units for j in new.jobs}
    changed = [j for j in old.jobs if new_units.get(j.name) != j.units]
    if not changed:
        return
    try:
        views = observe(old, load_state(old.layout.state), query)
    except HpcffnError as exc:
        raise HpcffnError(f"cannot tell whether jobs of {old.workdir} are still queued ({exc}); "
                          "re-plan with --force if none are") from None
    alive = [j.name for j in changed if any(v.category is Category.ALIVE for v in views[j.name])]
    if alive:
        raise HpcffnError(
            f"{old.layout.plan}: jobs {', '.join(alive)} are still pending or running and the new plan changes "
            f"which tiles or groups their tasks work on; wait for them or run `hpcffn cancel {old.workdir}`, "
            "or re-plan with --force"
        )


def unit_groups(plan: Plan) -> dict[str, set[str]]:
    """Groups of every unit name at once (a group, a tile's group, a volume's groups): one pass."""
    out: dict[str, set[str]] = {g.name: {g.name} for g in plan.groups}
    for t in plan.tiles:
        out.setdefault(t.name, set()).update({t.group} if t.group else set())
        vol = out.setdefault(t.volume, set())
        if t.group:
            vol.add(t.group)
    return out


def selected_tasks(plan: Plan, job: JobPlan, stages: list[str] | None, groups: list[str] | None,
                   of_unit: dict[str, set[str]] | None = None) -> list[Task]:
    """Tasks of `job` kept by the --stage/--group filters (`of_unit`: unit_groups(plan), if at hand)."""
    if stages and job.stage not in stages:
        return []
    tasks = job_tasks(job)
    if not groups:
        return tasks
    if job.group is not None:
        return tasks if job.group in groups else []
    of_unit = of_unit if of_unit is not None else unit_groups(plan)
    wanted = set(groups)
    return [t for t in tasks if of_unit.get(unit_of(job, t), set()) & wanted]


def check_filters(plan: Plan, stages: list[str] | None, groups: list[str] | None) -> None:
    for s in stages or []:
        if s not in STAGES:
            raise HpcffnError(f"--stage {s!r} is not a stage; use one of {', '.join(STAGES)}")
        expanded = s in CONSENSUS_STEPS and "infer" in stages  # --stage infer, in a plan without consensus
        if not any(j.stage == s for j in plan.jobs) and not expanded:
            raise HpcffnError(f"--stage {s!r} has no job in {plan.layout.plan} (not in the spec's stages:)")
    names = {g.name for g in plan.groups}
    for g in groups or []:
        if g not in names:
            raise HpcffnError(f"--group {g!r} is not a group of {plan.layout.plan}; known: {', '.join(sorted(names))}")


@dataclass
class Step:
    """One sbatch call to make (or one local run): a job and the tasks it covers."""

    job: JobPlan
    tasks: list[Task]
    deps: list[tuple[str, str]]  # (dependency type, upstream job name) of upstream jobs in this run
    old_deps: list[str]  # "type:id" of alive upstream work already in the queue

    @property
    def array(self) -> str | None:
        if not self.job.array:
            return None
        return slurm.array_spec([t for t in self.tasks if t is not None], self.job.throttle)

    def calls(self, max_array_size: int | None = None) -> list[tuple[int, list[Task], str | None]]:
        """(offset, tasks, --array value) of each sbatch call: one, or pieces under MaxArraySize."""
        if not self.job.array:
            return [(0, self.tasks, None)]
        ids = [t for t in self.tasks if t is not None]
        return [(off, part, slurm.array_spec([t - off for t in part], self.job.throttle))
                for off, part in limits.pieces(ids, max_array_size or max(ids) + 1)]


def plan_steps(plan: Plan, views: dict[str, list[TaskView]], resume: bool,
               stages: list[str] | None = None, groups: list[str] | None = None) -> list[Step]:
    """What to submit, in dependency order, and what each step waits for.

    Linear in jobs + tasks: every per-task question is a set or dict lookup.
    """
    check_filters(plan, stages, groups)
    redo = {Category.NEVER, Category.MISSING}
    if resume:
        redo |= {Category.FAILED, Category.LOST}
    of_unit = unit_groups(plan) if groups else None
    order = topo_order(plan)
    todo: dict[str, list[Task]] = {}
    redone: dict[str, set[str]] = {}  # job -> queue ids of its failed/alive work submitted again now
    for job in order:
        keep = set(selected_tasks(plan, job, stages, groups, of_unit))
        waits_on = _redone_upstream(job, redone)
        tasks = [v.task for v in views[job.name] if v.task in keep
                 and (v.category in redo or (resume and _doomed(v, waits_on)))]
        if tasks:
            todo[job.name] = tasks
            chosen = set(tasks)
            redone[job.name] = _queue_ids([v for v in views[job.name] if v.task in chosen
                                           and v.category in (Category.FAILED, Category.ALIVE) and v.sub is not None])
    by_name = {j.name: j for j in plan.jobs}
    upstream_of: dict[str, tuple[TaskView | None, list[str]]] = {}  # per upstream job: asked once
    steps = []
    for job in order:
        if job.name not in todo:
            continue
        deps, old = [], []
        for dep in job.depends_on:
            if dep.job not in by_name:
                continue
            if dep.job in todo:
                deps.append((dep.type, dep.job))
            if dep.job not in upstream_of:  # 50 train jobs on one partitions array: look once
                upstream_of[dep.job] = _upstream(plan, by_name[dep.job], views, todo, groups, of_unit)
            v, alive = upstream_of[dep.job]
            if v is not None:
                what = {Category.NEVER: "was never submitted",
                        Category.FAILED: f"is {v.info.state if v.info else 'FAILED'}",
                        Category.LOST: "is unknown to SLURM and has no success marker",
                        Category.MISSING: "finished but its output is gone"}[v.category]
                hint = ("use --resume" if v.category in (Category.FAILED, Category.LOST)
                        else "drop the --stage/--group filter")
                raise HpcffnError(
                    f"job {job.name} depends on {dep.job} ({v.unit}), which {what}: {hint} so it is submitted too, "
                    f"or check `hpcffn status`"
                )
            old += [f"{dep.type}:{i}" for i in alive]
        steps.append(Step(job, todo[job.name], deps, old))
    return steps


def _upstream(plan: Plan, up: JobPlan, views: dict[str, list[TaskView]], todo: dict[str, list[Task]],
              groups: list[str] | None, of_unit) -> tuple[TaskView | None, list[str]]:
    """(the first upstream task that blocks, queue ids of the alive ones) of upstream job `up`,
    leaving out what this run submits again."""
    # With --group, only the upstream tasks of those groups matter (e.g. their tiles).
    relevant = set(selected_tasks(plan, up, None, groups, of_unit))
    again = set(todo.get(up.name, []))
    upstream = [v for v in views[up.name] if v.task in relevant and v.task not in again]
    # Never submitted but its success marker exists (run standalone or elsewhere): satisfied.
    blocked = next((v for v in upstream if v.category in (Category.FAILED, Category.LOST, Category.MISSING)
                    or (v.category is Category.NEVER and not is_done(plan, up.stage, v.unit))), None)
    return blocked, alive_ids(upstream)


def _queue_ids(views: list[TaskView]) -> set[str]:
    """Every id a --dependency may name for these tasks: the task's own and its submission's."""
    out: set[str] = set()
    for v in views:
        out.add(v.slurm_id)
        out.add(v.sub.job_id)
    return out


def _redone_upstream(job: JobPlan, redone: dict[str, set[str]]) -> set[str]:
    """Queue ids of failed (or doomed) upstream work of `job` that this run submits again."""
    out: set[str] = set()
    for dep in job.depends_on:
        out |= redone.get(dep.job, set())
    return out


def _doomed(v: TaskView, redone_ids: set[str]) -> bool:
    """A task still pending on afterok upstream work that failed and is resubmitted now.

    SLURM keeps it PENDING (Dependency) until the rest of the upstream array ends, then kills
    it (--kill-on-invalid-dep): resume submits it again now instead of needing a second resume.
    `redone_ids`: ids of the upstream work submitted again (failed or itself doomed, never
    "lost": a job SLURM forgot may have satisfied it).
    """
    if not redone_ids or v.category is not Category.ALIVE or v.sub is None or v.sub.local or v.info is None \
            or v.info.state != "PENDING":
        return False
    for word in v.sub.command:
        if word.startswith("--dependency="):
            for part in word.split("=", 1)[1].split(","):
                typ, *ids = part.split(":")
                if typ == "afterok" and not redone_ids.isdisjoint(ids):
                    return True
    return False


def alive_ids(views: list[TaskView]) -> list[str]:
    """Queue ids of alive tasks: a whole submission's id when all its tasks are alive."""
    alive = [v for v in views if v.category is Category.ALIVE and v.sub is not None]
    by_sub: dict[str, list[TaskView]] = {}
    for v in alive:
        by_sub.setdefault(v.sub.job_id, []).append(v)
    ids = []
    for jid, vs in by_sub.items():
        sub = vs[0].sub
        if sub.tasks is None or len(vs) == len(sub.tasks):
            ids.append(jid)
        else:
            ids += [v.slurm_id for v in vs]
    return ids


def dependency_string(step: Step, new_ids: dict[str, str | list[str]]) -> str | None:
    """`--dependency` value, always with the type written out (sbatch's default is afterany).

    `new_ids`: the id of each upstream job submitted in this run, or the ids of its pieces.
    """
    by_type: dict[str, list[str]] = {}
    for typ, name in step.deps:
        ids = new_ids[name]
        by_type.setdefault(typ, []).extend([ids] if isinstance(ids, str) else ids)
    for item in step.old_deps:
        typ, jid = item.split(":", 1)
        by_type.setdefault(typ, []).append(jid)
    if not by_type:
        return None
    return ",".join(f"{t}:{':'.join(dict.fromkeys(ids))}" for t, ids in by_type.items())


def check_scripts(plan: Plan, steps: list[Step], views: dict[str, list[TaskView]]) -> None:
    """Refuse scripts that are missing, fail `bash -n`, or changed under a submission still alive."""
    root = plan.layout.root
    for step in steps:
        path = root / step.job.script
        if not path.is_file():
            raise HpcffnError(f"{path} (job {step.job.name}) is missing: re-run `hpcffn plan` to render it")
        proc = subprocess.run(["bash", "-n", str(path)], check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["syntax error"])[0]
            raise HpcffnError(f"{path} is not valid bash ({first}); fix the edit or re-render it with `hpcffn plan`")
    for job in plan.jobs:
        path = root / job.script
        alive = [v for v in views[job.name] if v.category is Category.ALIVE and v.sub is not None]
        if alive and path.is_file():
            digest = sha256_file(path)
            changed = [v for v in alive if v.sub.sha256 != digest]
            if changed:
                v = changed[0]
                raise HpcffnError(
                    f"{path} changed after it was submitted as job {v.slurm_id}, which is still "
                    f"{v.info.state if v.info else 'queued'}: revert the edit, or `hpcffn cancel --stage {job.stage}` first"
                )


def _var(name: str) -> str:
    return "JOB_" + re.sub(r"\W", "_", name)


def dry_run_script(plan: Plan, steps: list[Step], max_array_size: int | None = None) -> str:
    """The sbatch calls as a bash script a user can read, or run by hand, as they are."""
    lines = ["#!/usr/bin/env bash", "# hpcffn submit --dry-run: the sbatch calls `hpcffn submit` would make.",
             "set -euo pipefail", f"cd {shlex.quote(str(plan.layout.root))}"]
    names: dict[str, list[str]] = {}
    calls = {}
    for step in steps:
        calls[step.job.name] = step.calls(max_array_size)
        var = _var(step.job.name)
        n = len(calls[step.job.name])
        names[step.job.name] = [var if n == 1 else f"{var}_{k}" for k in range(n)]
    for step in steps:
        dep = dependency_string(step, {n: [f"${{{v}}}" for v in vs] for n, vs in names.items()})
        for (offset, _, array), var in zip(calls[step.job.name], names[step.job.name]):
            cmd = slurm.sbatch_command(step.job.script, array, dep, limits.export_option(offset))
            quoted = " ".join(shlex.quote(c) if "${" not in c else f'"{c}"' for c in cmd)
            lines.append(f"{var}=$({quoted} | cut -d';' -f1)")
            lines.append(f'echo "{step.job.name}: ${var}"')
    return "\n".join(lines) + "\n"


def submit(plan: Plan, resume: bool = False, stages: list[str] | None = None, groups: list[str] | None = None,
           dry_run: bool = False, echo=print, scheduler: slurm.Slurm | None = None) -> list[Submission]:
    """Submit what needs submitting to `scheduler` (this machine's SLURM by default); return the
    new submissions (none on a dry run).

    Arrays longer than the cluster's MaxArraySize go in as several arrays (limits.py); every
    later step depends on all of their ids, and state.json records each piece's offset.
    """
    state_path = plan.layout.state
    scheduler = scheduler or slurm.Slurm()
    if not dry_run:
        scheduler.tool("sbatch")  # not installed here: the one-line "not on PATH" error
    with locked(state_path):
        state = load_state(state_path)
        views = observe(plan, state, query=scheduler.query)
        steps = plan_steps(plan, views, resume, stages, groups)
        check_scripts(plan, steps, views)
        lim = limits.resolve(plan, scheduler) if any(s.job.array for s in steps) else None
        size = lim.max_array_size if lim else None
        total = sum(len(s.tasks) for s in steps)
        if lim and lim.max_submit_jobs and total > lim.max_submit_jobs:
            echo(f"warning: {total:,} tasks to submit, more than your MaxSubmitJobs {lim.max_submit_jobs:,}: SLURM "
                 "refuses the rest; submit part with --stage/--group, then the rest with --resume")
        if dry_run:
            echo(dry_run_script(plan, steps, size).rstrip("\n"))
            return []
        pretest.require_all_accepted(plan, steps, size, scheduler)  # all or nothing: sbatch must accept every script first
        made: list[Submission] = []
        try:
            _queue(plan, steps, size, state_path, made, echo, scheduler)
        finally:
            if made:  # once, not per sbatch call: until then each one is a journal line (state.record)
                state.submissions += made
                save_state(state_path, state)
        if not steps:
            echo("nothing to submit: every selected job is submitted (see `hpcffn status`; `--resume` resubmits failed work)")
        return made


def _queue(plan: Plan, steps: list[Step], size: int | None, state_path: Path, made: list[Submission], echo,
           scheduler: slurm.Slurm) -> None:
    """The sbatch calls, in order; each new submission is recorded (journal line, fsynced) and
    put in `made` before the next call, so a submit stopped anywhere forgets nothing it queued."""
    new_ids: dict[str, list[str]] = {}
    for step in steps:
        script = plan.layout.root / step.job.script
        digest = sha256_file(script)
        slurm.make_log_dirs(script, plan.layout.root)
        dep = dependency_string(step, new_ids)
        calls = step.calls(size)
        for offset, tasks, array in calls:
            cmd = slurm.sbatch_command(step.job.script, array, dep, limits.export_option(offset))
            jid = scheduler.sbatch(cmd, cwd=plan.layout.root)
            new_ids.setdefault(step.job.name, []).append(jid)
            sub = Submission(job=step.job.name, job_id=jid, submitted=now(), sha256=digest,
                             tasks=[t for t in tasks if t is not None] if step.job.array else None,
                             array_offset=offset, command=cmd, units=task_units(step.job, tasks))
            record(state_path, sub)
            made.append(sub)
            piece = f" (piece {len(new_ids[step.job.name])}/{len(calls)}, offset {offset})" if len(calls) > 1 else ""
            echo(f"{step.job.name}: submitted job {jid}" + (f" (array {array})" if array else "") + piece)
