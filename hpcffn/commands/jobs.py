"""CLI commands for the job machinery: submit, run (local), check, status, cancel, logs.

Thin: parse options, find the plan, call submit.py / local_runner.py / status.py / jobs_admin.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hpcffn.core.errors import HpcffnError
from hpcffn.core.stage_table import expand_stages

PLAN_DIR = typer.Argument(None, help="The experiment's workdir (holding plan.json); default: the current directory.")
SPEC = typer.Option(None, "--spec", help="Find the workdir from this experiment spec instead of PLAN_DIR.")
STAGE = typer.Option(None, "--stage", help="Only this stage (repeatable); stitch means its steps joins, resolve, relabel, pyramid; infer also reverse and consensus.",
                     callback=expand_stages)
PLAN_DIR_OPT = typer.Option(None, "--plan-dir", help="The workdir; default: the current directory.")
GROUP = typer.Option(None, "--group", help="Only this group's jobs and tasks (repeatable).")


def find_plan(plan_dir: Path | None, spec: Path | None, tiles: bool = True):
    """Load plan.json from PLAN_DIR, the workdir of --spec, or the current directory (tiles: see load_plan)."""
    from hpcffn.core.plan_model import load_plan

    if plan_dir is not None and spec is not None:
        raise HpcffnError("give either PLAN_DIR or --spec, not both")
    if spec is not None:
        from hpcffn.plan.spec import load_spec

        workdir = Path(load_spec(spec).workdir).expanduser()
        if not workdir.is_absolute():
            candidates = [spec.resolve().parent / workdir, Path.cwd() / workdir]
            workdir = next((c for c in candidates if (c / "plan.json").is_file()), candidates[0])
        return load_plan(workdir, tiles)
    return load_plan(plan_dir if plan_dir is not None else Path.cwd(), tiles)


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach submit, run, status, cancel and logs to the root app."""
    app.command()(submit)
    app.command()(run)
    app.command()(check)
    app.command()(status)
    app.command()(cancel)
    app.command()(logs)


def submit(
    plan_dir: Path = PLAN_DIR,
    spec: Path = SPEC,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the sbatch calls as a bash script; submit nothing."),
    stage: list[str] = STAGE,
    group: list[str] = GROUP,
    resume: bool = typer.Option(False, "--resume", help="Also resubmit what failed, was cancelled or timed out, and what depends on it."),
    local: bool = typer.Option(False, "--local", help="Run the scripts here, without SLURM (same as `hpcffn run`)."),
) -> None:
    """Submit the rendered scripts (as they are on disk) to SLURM in dependency order."""
    # Tile records (most of plan.json at 100,000 tiles) only matter to --group's filter.
    plan = find_plan(plan_dir, spec, tiles=bool(group) or local)
    _note_pending_renders(plan)
    if local:
        if dry_run:
            raise HpcffnError("--dry-run prints sbatch calls; it does not combine with --local")
        _run_local(plan, resume, stage, group)
        return
    from hpcffn.jobs.submit import submit as do_submit

    do_submit(plan, resume=resume, stages=stage or None, groups=group or None, dry_run=dry_run, echo=typer.echo)


def run(
    plan_dir: Path = PLAN_DIR,
    spec: Path = SPEC,
    stage: list[str] = STAGE,
    group: list[str] = GROUP,
    resume: bool = typer.Option(False, "--resume", help="Also rerun what failed or was cancelled, and what depends on it."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    parallel: int = typer.Option(1, "--parallel", "-j", help="Array tasks of a job to run at the same time (at most the array's throttle)."),
) -> None:
    """Run the rendered scripts on this machine without SLURM, in dependency order."""
    plan = find_plan(plan_dir, spec)
    _note_pending_renders(plan)
    _run_local(plan, resume, stage, group, progress, parallel)


def _note_pending_renders(plan) -> None:
    from hpcffn.plan.render import pending_renders

    pending = pending_renders(plan.layout)
    if pending:
        typer.echo(f"note: {len(pending)} newer render(s) wait beside scripts you edited, and the edited "
                   f"scripts are what runs: {', '.join(pending)} (diff each with its script, merge, then "
                   "delete the .new)", err=True)


def _run_local(plan, resume, stage, group, progress=True, parallel=1):
    from hpcffn.jobs.local_runner import run_local

    if not run_local(plan, resume=resume, stages=stage or None, groups=group or None, echo=typer.echo,
                     progress=progress, parallel=parallel):
        typer.echo("some tasks failed: see `hpcffn status`, fix the cause, then `hpcffn run --resume`", err=True)
        raise typer.Exit(1)


def check(
    plan_dir: Path = PLAN_DIR,
    spec: Path = SPEC,
    stage: list[str] = STAGE,
    local: bool = typer.Option(False, "--local", help="Run the checks here with bash instead of submitting them."),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help="Seconds to wait for the check jobs."),
    collect: bool = typer.Option(False, "--collect", help="Submit nothing: print the reports earlier check jobs wrote."),
) -> None:
    """Run every job script once, for seconds, on its own partition and in its own environment,
    and report what the real run would hit (missing packages, unseen GPUs, unreadable inputs)."""
    from hpcffn.commands.job_views import check_table, terminal_console
    from hpcffn.jobs.check import run_checks

    if collect and local:
        raise HpcffnError("--collect reads earlier reports; it does not combine with --local")
    rows = run_checks(find_plan(plan_dir, spec), stages=stage or None, local=local, timeout=timeout, echo=typer.echo,
                      collect=collect)
    terminal_console().print(check_table(rows))
    bad = [r["job"] for r in rows if r.get("problems")]
    if bad:
        typer.echo(f"check: problems in {', '.join(bad)}; fix them (see the logs in logs/check/) and check again",
                   err=True)
        raise typer.Exit(1)
    typer.echo("check: every job script ran on its node and found what it needs")


def status(
    plan_dir: Path = PLAN_DIR,
    spec: Path = SPEC,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (for scripts)."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until nothing is pending or running."),
    interval: float = typer.Option(10.0, "--interval", min=1.0, help="Seconds between refreshes with --watch (backs off while idle)."),
) -> None:
    """Show every job (stage x group) with its SLURM states, task counts and outputs."""
    from hpcffn.commands.job_views import show

    # The table needs the jobs, not the tile records (most of plan.json at 100,000 tiles).
    show(find_plan(plan_dir, spec, tiles=False), as_json=as_json, watch=watch, interval=interval, echo=typer.echo)


def cancel(
    plan_dir: Path = PLAN_DIR,
    spec: Path = SPEC,
    stage: list[str] = STAGE,
    group: list[str] = GROUP,
) -> None:
    """Cancel the experiment's pending and running jobs (all, or by stage/group)."""
    from hpcffn.jobs.admin import cancel as do_cancel

    do_cancel(find_plan(plan_dir, spec), stages=stage or None, groups=group or None, echo=typer.echo)


def logs(
    stage_name: str = typer.Argument(..., metavar="STAGE", help="The stage whose log to show."),
    which: str = typer.Argument(None, metavar="[GROUP|TILE]", help="A group, tile or volume name (or array index)."),
    plan_dir: Path = PLAN_DIR_OPT,
    spec: Path = SPEC,
    tail: int = typer.Option(0, "--tail", min=0, help="Only the last N lines (0: all)."),
) -> None:
    """Print the logs of a stage's job for a group/tile: every run, oldest first (a resume is a
    new run; a requeue appends to its run's log)."""
    from hpcffn.jobs.admin import log_paths

    paths = log_paths(find_plan(plan_dir, spec), stage_name, which)
    for p in paths:
        lines = p.read_text(errors="replace").splitlines()
        if len(paths) > 1:
            typer.echo(f"==> {p} <==")
        typer.echo("\n".join(lines[-tail:] if tail else lines))
