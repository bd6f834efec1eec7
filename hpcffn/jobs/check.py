"""`hpcffn check`: run every job script once, for seconds, to see that the real run will work.

Before a pipeline waits days in the queue, each rendered script (as it is on disk, hand edits
included) is submitted once with HPCFFN_CHECK=<job> in its environment, a short time limit and
its own log; inside, `hpcffn stage ...` writes a probe report instead of running the stage
(hpcffn/stages/probe.py). Array jobs run task 0 only. Nothing is recorded in state.json:
checks are not part of the pipeline. `--local` runs the scripts here with bash instead.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import JobPlan, Plan
from hpcffn.jobs import slurm
from hpcffn.stages.probe import CHECK_ENV

CHECK_TIME = "00:15:00"  # the time limit of a check job (and of a local check run)
CHECK_SECONDS = 15 * 60


def report_path(plan: Plan, job: JobPlan) -> Path:
    return plan.layout.root / "checks" / f"{job.name}.json"


def _selected(plan: Plan, stages: list[str] | None) -> list[JobPlan]:
    jobs = [j for j in plan.jobs if not stages or j.stage in stages]
    if not jobs:
        raise HpcffnError(f"no job of the plan is in stage(s) {', '.join(stages or [])}: see `hpcffn status`")
    for job in jobs:
        path = plan.layout.root / job.script
        if not path.is_file():
            raise HpcffnError(f"{path} (job {job.name}) is missing: re-run `hpcffn plan` to render it")
    return jobs


def check_command(plan: Plan, job: JobPlan) -> list[str]:
    """The sbatch line of a check: the job's script with its own name, log, time limit and array task 0."""
    log = plan.layout.root / "logs" / "check" / f"{job.name}_%j.out"
    extra = [f"--export=ALL,{CHECK_ENV}={job.name}", f"--job-name={plan.name}-check-{job.name}", f"--output={log}",
             f"--time={CHECK_TIME}", "--signal=B:USR1@60", "--no-requeue"]
    return slurm.sbatch_command(plan.layout.root / job.script, array="0" if job.array else None, extra=extra)


def run_checks(plan: Plan, stages: list[str] | None = None, local: bool = False, timeout: float = 900.0,
               poll: float = 5.0, echo=print, collect: bool = False, scheduler: slurm.Slurm | None = None) -> list[dict]:
    """Run the checks (on `scheduler`, this machine's SLURM by default) and return one row per
    job: its report, or why there is none.

    `collect`: run nothing, only read the reports earlier check jobs wrote (after a timeout).
    """
    jobs = _selected(plan, stages)
    if collect:
        return _rows(plan, jobs, {job.name: str(plan.layout.root / "logs" / "check" / f"{job.name}_*.out") for job in jobs})
    (plan.layout.root / "logs" / "check").mkdir(parents=True, exist_ok=True)
    for job in jobs:
        report_path(plan, job).unlink(missing_ok=True)
    if local:
        logs = {job.name: _run_here(plan, job) for job in jobs}
    else:
        scheduler = scheduler or slurm.Slurm()
        ids = {}
        for job in jobs:
            ids[job.name] = scheduler.sbatch(check_command(plan, job), cwd=plan.layout.root)
            echo(f"check {job.name}: submitted as job {ids[job.name]}")
        # SLURM knows an array check by its one task ("<id>_0"), not by the bare array id.
        _wait([f"{ids[j.name]}_0" if j.array else ids[j.name] for j in jobs], timeout, poll, echo, scheduler)
        logs = {name: str(plan.layout.root / "logs" / "check" / f"{name}_{jid}.out") for name, jid in ids.items()}
    return _rows(plan, jobs, logs)


# A log line that says why a job ended: shell, module, container, Python and SLURM messages.
_CAUSE = re.compile(r"command not found|not found|no such file|permission denied|error|cannot|can't|failed|"
                    r"killed|cancelled|time limit|exceeded|out of memory|unable|denied|refused|invalid",
                    re.IGNORECASE)


def cause_line(log: str) -> str | None:
    """The line of a check job's log that best says why it wrote no report: the last line that
    reads like an error, else the last line; None when there is no log (newest of a glob)."""
    matches = sorted(Path(log).parent.glob(Path(log).name), key=lambda p: p.stat().st_mtime)
    if not matches:
        return None
    try:
        lines = [line.strip() for line in matches[-1].read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    tail = lines[-40:]
    telling = [line for line in tail if _CAUSE.search(line)]
    line = (telling or tail or [""])[-1]
    return line[:300] + ("..." if len(line) > 300 else "")


def _rows(plan: Plan, jobs: list[JobPlan], logs: dict[str, str]) -> list[dict]:
    rows = []
    for job in jobs:
        path = report_path(plan, job)
        if path.is_file():
            rows.append({**json.loads(path.read_text()), "log": logs[job.name]})
            continue
        cause = cause_line(logs[job.name])
        if cause is None:
            why = f"no report and no log yet ({logs[job.name]}): the check job has not run; wait, then --collect"
        elif cause:
            why = f"no report; the log ends: {cause} ({logs[job.name]})"
        else:
            why = f"no report and an empty log ({logs[job.name]}): the job failed before it printed anything"
        rows.append({"job": job.name, "stage": job.stage, "log": logs[job.name], "problems": [why]})
    return rows


def _run_here(plan: Plan, job: JobPlan) -> str:
    from hpcffn.jobs.local_runner import task_env
    from hpcffn.jobs.slurm import sbatch_options

    script = plan.layout.root / job.script
    log = plan.layout.root / "logs" / "check" / f"{job.name}_local.out"
    env = task_env(plan, job, sbatch_options(script), "0", 0 if job.array else None, 0)
    env[CHECK_ENV] = job.name
    with open(log, "wb") as out:
        subprocess.run(["bash", str(script)], cwd=plan.layout.root, stdout=out, stderr=subprocess.STDOUT, env=env,
                       check=False, timeout=CHECK_SECONDS)
    return str(log)


def _wait(ids: list[str], timeout: float, poll: float, echo, scheduler: slurm.Slurm) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = scheduler.query(ids)
        alive = [i for i in ids if i in states and states[i].alive]
        if not alive:
            return
        if time.monotonic() > deadline:
            echo(f"check: {len(alive)} check job(s) still queued or running after {timeout:.0f} s "
                 f"({', '.join(alive)}); they write their reports when they run: `hpcffn check --collect` "
                 "later prints the table from them")
            return
        time.sleep(poll)
