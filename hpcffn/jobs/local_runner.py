"""Run a plan's rendered scripts on this machine, without SLURM, in dependency order.

For trying a whole pipeline on a workstation before going to the cluster: the very same
scripts run with bash, each job once its upstream jobs have completed, up to `parallel` tasks
at a time across all jobs (an array never more than its %throttle), with the SLURM_* variables they read set as
SLURM would set them and HPCFFN_LOCAL=1 (so a train/infer script exits 75 after a
checkpoint instead of calling `scontrol requeue`; it is then started again here). Outcomes
go to the same state.json with SLURM-like state names, so `hpcffn status` reads them the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import EXIT_REQUEUE
from hpcffn.core.plan_model import JobPlan, Plan
from hpcffn.core.progress import ProgressBar
from hpcffn.jobs.reaper import Reaper
from hpcffn.jobs.slurm import expand_pattern, sbatch_options
from hpcffn.jobs.state import LocalTask, Submission, load_state, locked, now, updating
from hpcffn.jobs.submit import (
    Step,
    check_scripts,
    observe,
    plan_steps,
    sha256_file,
    task_units,
)

MAX_REQUEUES = 100


# Local run L<n> poses as SLURM job LOCAL_ID_BASE + n (scripts and log names want a number).
LOCAL_ID_BASE = 900000


class _Stopped(Exception):
    """SIGTERM (e.g. `hpcffn cancel`) reached the runner."""


def task_env(plan: Plan, job: JobPlan, opts: dict[str, str], num_id: str, task: int | None, restarts: int) -> dict[str, str]:
    """The environment SLURM would give this task, plus HPCFFN_LOCAL=1."""
    env = dict(os.environ)
    env.update({
        "HPCFFN_LOCAL": "1",
        "HPCFFN_LOCAL_ID": f"L{int(num_id) - LOCAL_ID_BASE}",  # the id `hpcffn status` shows
        "SLURM_JOB_ID": num_id,
        "SLURM_JOBID": num_id,
        "SLURM_JOB_NAME": opts.get("job-name") or job.name,
        "SLURM_SUBMIT_DIR": str(plan.layout.root),
        "SLURM_CPUS_PER_TASK": opts.get("cpus-per-task") or "1",
        "SLURM_CPUS_ON_NODE": str(os.cpu_count() or 1),
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_NNODES": "1",
        "SLURM_RESTART_COUNT": str(restarts),
        "SLURM_CLUSTER_NAME": "local",
        "SLURMD_NODENAME": socket.gethostname().split(".")[0],
        "SLURM_JOB_PARTITION": opts.get("partition") or "local",
    })
    for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
              "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"):
        env.pop(k, None)
    if job.array:
        env.update({
            "SLURM_ARRAY_JOB_ID": num_id,
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_TASK_COUNT": str(len(job.units)),
            "SLURM_ARRAY_TASK_MIN": "0",
            "SLURM_ARRAY_TASK_MAX": str(len(job.units) - 1),
        })
    return env


class _Running:
    """The task processes alive now, so a stop request (SIGTERM, Ctrl-C) can reach every one,
    and the slots that keep at most `parallel` tasks running across all jobs."""

    def __init__(self, parallel: int = 1):
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self.stopping = False
        self.slots = threading.BoundedSemaphore(parallel)
        self.reaper = Reaper()  # ends the tasks if this runner is killed (SIGKILL included)

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
            late = self.stopping
        if late:  # started while the others were being stopped
            _stop([proc])

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def stop_all(self) -> None:
        with self._lock:
            self.stopping = True
            procs = list(self._procs)
        _stop(procs)


def _run_task(plan: Plan, job: JobPlan, sub: Submission, task: int | None, num_id: str, max_requeues: int,
              running: _Running, extra_env: dict[str, str]) -> LocalTask | None:
    """Run one task to the end, restarting it while it exits 75 (checkpoint saved, work left).

    Runs in a worker thread once a slot is free; a stop request ends it as CANCELLED (never
    restarted), or before it starts (None: the task keeps its unstarted record).
    """
    with running.slots:
        if running.stopping:
            return None
        return _run_held(plan, job, sub, task, num_id, max_requeues, running, extra_env)


def _run_held(plan: Plan, job: JobPlan, sub: Submission, task: int | None, num_id: str, max_requeues: int,
              running: _Running, extra_env: dict[str, str]) -> LocalTask:
    script = plan.layout.root / job.script
    opts = sbatch_options(script)
    pattern = opts.get("output") or f"logs/{job.stage}/%x_%A_%a.out"
    log = Path(expand_pattern(pattern, opts.get("job-name") or job.name, num_id, task))
    if not log.is_absolute():
        log = plan.layout.root / log
    log.parent.mkdir(parents=True, exist_ok=True)
    rec = LocalTask(state="RUNNING", start=now(), log=str(log))
    while True:
        _save_task(plan, sub, task, rec)
        with open(log, "ab") as out:
            proc = subprocess.Popen(["bash", str(script)], cwd=plan.layout.root, stdout=out, stderr=subprocess.STDOUT,
                                    env={**task_env(plan, job, opts, num_id, task, rec.restarts), **extra_env},
                                    start_new_session=True)
            running.add(proc)
            running.reaper.watch(proc.pid)  # start_new_session: the task's pid is its group id
            try:
                rc = proc.wait()
            finally:
                running.discard(proc)
                running.reaper.forget(proc.pid)
        rec.exit_code = rc
        if running.stopping:
            rec.state, rec.reason, rec.end = "CANCELLED", "CancelledByUser", now()
            return rec
        if rc == EXIT_REQUEUE and rec.restarts < max_requeues:
            rec.restarts += 1
            continue
        rec.end = now()
        if rc == 0:
            rec.state, rec.reason = "COMPLETED", "None"
        else:
            rec.state = "FAILED"
            rec.reason = "RequeueLimit" if rc == EXIT_REQUEUE else "NonZeroExitCode"
        return rec


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the tasks' process groups (scripts checkpoint on TERM), then SIGKILL after 30 s."""
    import time

    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _save_task(plan: Plan, sub: Submission, task: int | None, rec: LocalTask) -> None:
    key = str(task if task is not None else 0)
    sub.local_tasks[key] = rec.model_copy()
    with updating(plan.layout.state) as st:
        for s in st.submissions:
            if s.local and s.job_id == sub.job_id:
                s.local_tasks[key] = rec.model_copy()


def run_local(plan: Plan, resume: bool = False, stages: list[str] | None = None, groups: list[str] | None = None,
              echo=print, progress: bool = True, max_requeues: int = MAX_REQUEUES, parallel: int = 1) -> bool:
    """Run what needs running here; return True when every task that ran completed.

    `parallel`: array tasks of one job run at the same time (capped by the array's throttle).
    """
    if parallel < 1:
        raise HpcffnError(f"--parallel {parallel}: give 1 or more tasks to run at a time")
    state_path = plan.layout.state
    with locked(state_path):
        state = load_state(state_path)
        views = observe(plan, state)
        steps = plan_steps(plan, views, resume, stages, groups)
        check_scripts(plan, steps, views)
        for step in steps:
            if step.old_deps:
                raise HpcffnError(
                    f"job {step.job.name} would wait for SLURM jobs still in the queue ({', '.join(step.old_deps)}): "
                    "let them finish or `hpcffn cancel` them before running locally"
                )
        if not steps:
            echo("nothing to run: every selected job already ran (see `hpcffn status`; `--resume` reruns failed work)")
            return True
        old = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            return _run_steps(plan, steps, echo, progress, max_requeues, parallel)
        except _Stopped:
            raise HpcffnError(
                "the local run was stopped (SIGTERM, e.g. `hpcffn cancel`); `hpcffn run --resume` continues it"
            ) from None
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _raise_stopped(signum, frame):
    raise _Stopped()


def _run_steps(plan: Plan, steps: list[Step], echo, progress: bool, max_requeues: int, parallel: int) -> bool:
    """Run the steps as their dependencies allow, up to `parallel` tasks at a time in all.

    Jobs run in threads once every upstream job of this run has completed (afterok); a failed
    upstream cancels its dependants. The main thread only schedules and waits, so SIGTERM and
    Ctrl-C land here: every running task is stopped (CANCELLED), nothing new starts.
    """
    running = _Running(parallel)
    try:
        return _run_with(plan, steps, echo, progress, max_requeues, parallel, running)
    finally:
        running.reaper.close()


def _run_with(plan: Plan, steps: list[Step], echo, progress: bool, max_requeues: int, parallel: int,
              running: _Running) -> bool:
    names = {s.job.name for s in steps}
    finished: dict[str, bool] = {}  # job name -> every task completed
    waiting = list(steps)  # in dependency order
    started: dict = {}  # future -> step
    # Tasks sharing this machine's GPU: TensorFlow would give all of its memory to the first.
    extra_env = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if parallel > 1 and "TF_FORCE_GPU_ALLOW_GROWTH" not in os.environ else {}
    total = sum(len(s.tasks) for s in steps)
    with ProgressBar("hpcffn run", total, progress, elapsed=True) as bar, \
            ThreadPoolExecutor(max_workers=len(steps), thread_name_prefix="hpcffn-job") as jobs:
        advance = bar.advance  # one task done (called from the job threads)
        try:
            while waiting or started:
                for step in list(waiting):
                    upstream = [name for _, name in step.deps if name in names]
                    if any(finished.get(name) is False for name in upstream):
                        waiting.remove(step)
                        finished[step.job.name] = False
                        _cancel_step(plan, step, advance)
                    elif all(name in finished for name in upstream):
                        waiting.remove(step)
                        bar.describe(step.job.name)
                        started[jobs.submit(_run_job, plan, step, max_requeues, parallel, running, extra_env,
                                            advance, echo)] = step
                if started:
                    done, _ = wait(list(started), timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        finished[started.pop(fut).job.name] = fut.result()
        except (KeyboardInterrupt, _Stopped):
            running.stop_all()
            for fut in started:
                fut.result()  # each job thread returns once its tasks are stopped
            raise
    return all(finished.values())


def _new_submission(plan: Plan, step: Step) -> tuple[Submission, str]:
    job = step.job
    with updating(plan.layout.state) as st:
        lid = st.next_local_id()
        num_id = str(LOCAL_ID_BASE + int(lid[1:]))
        sub = Submission(job=job.name, job_id=lid, submitted=now(),
                         sha256=sha256_file(plan.layout.root / job.script),
                         tasks=[t for t in step.tasks if t is not None] if job.array else None,
                         command=["bash", job.script], local=True, runner_pid=os.getpid(),
                         runner_host=socket.gethostname(),
                         local_tasks={str(t if t is not None else 0): LocalTask() for t in step.tasks},
                         units=task_units(job, step.tasks))
        st.submissions.append(sub)
    return sub, num_id


def _cancel_step(plan: Plan, step: Step, advance) -> None:
    """An upstream job failed: record this job's tasks as cancelled, as SLURM would."""
    sub, _ = _new_submission(plan, step)
    for task in step.tasks:
        _save_task(plan, sub, task, LocalTask(state="CANCELLED", reason="DependencyNeverSatisfied", end=now()))
        advance()


def _run_job(plan: Plan, step: Step, max_requeues: int, parallel: int, running: _Running, extra_env: dict,
             advance, echo) -> bool:
    """Run one job's tasks (in a job thread), at most min(parallel, throttle) at a time; True when all completed."""
    job = step.job
    sub, num_id = _new_submission(plan, step)
    width = min(parallel, job.throttle or parallel) if job.array else 1
    ok = True
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix=f"hpcffn-{job.name}") as pool:
        futures = {pool.submit(_run_task, plan, job, sub, t, num_id, max_requeues, running, extra_env): t
                   for t in step.tasks}
        for fut in as_completed(futures):
            task, rec = futures[fut], fut.result()
            if rec is None:  # never started: the run was stopped first
                ok = False
                continue
            _save_task(plan, sub, task, rec)
            if rec.state != "COMPLETED":
                ok = False
                if not running.stopping:
                    echo(f"{job.name}" + (f" task {task}" if task is not None else "")
                         + f" {rec.state} (exit {rec.exit_code}); log: {rec.log}")
            advance()
    return ok
