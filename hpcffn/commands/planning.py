"""CLI commands: plan, init, validate (thin: parse, call planner/render, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach this area's commands to the root app and the `stage` sub-app."""
    app.command("plan")(plan)
    app.command("init")(init)
    app.command("validate")(validate)


def plan(
    spec: Annotated[Path, typer.Argument(help="The experiment spec (YAML).")],
    templates: Annotated[Path | None, typer.Option("--templates", help="Your template directory (searched before the shipped one).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite hand-edited scripts (and re-plan a workdir of another experiment).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be written; write nothing.")] = False,
) -> None:
    """Tile the volumes, deal GPU groups and render every batch script into the workdir."""
    from contextlib import nullcontext

    from hpcffn.core.locks import exclusive
    from hpcffn.plan.planner import check_workdir_owner, make_plan
    from hpcffn.plan.render import write_workdir
    from hpcffn.plan.summary import print_plan_summary

    planned = make_plan(spec, templates)
    check_workdir_owner(planned, force)
    layout = planned.plan.layout
    # Two plans writing one workdir at once would leave scripts out of step with plan.json.
    changed, moved = {}, []
    with nullcontext() if dry_run else exclusive(layout.plan_lock, f"the plan of {layout.root}",
                                                 "wait for that `hpcffn plan` to finish, then plan again"):
        fingerprints = records = None
        if not dry_run:
            from hpcffn.core.units import tile_records
            from hpcffn.jobs.replan import (
                changed_units,
                invalidate,
                refuse_work_in_progress,
            )
            from hpcffn.plan.fingerprints import unit_fingerprints

            records = tile_records(planned.plan.tiles)  # formatted once: fingerprints and unit indexes
            fingerprints = unit_fingerprints(planned.plan, records)
            changed = changed_units(planned.plan, fingerprints)
            if not force:
                _check_queued_jobs(planned.plan)
                refuse_work_in_progress(planned.plan, changed)
        report = write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=force, dry_run=dry_run,
                               fingerprints=fingerprints, records=records,
                               before_switch=lambda: moved.extend(invalidate(planned.plan, changed)))
    print_plan_summary(planned, report, dry_run=dry_run)
    _say_replanned(changed, moved)


def _say_replanned(changed: dict, moved: list[str]) -> None:
    """What a re-plan undid: units whose box, parameters or inputs changed run again."""
    if not changed:
        return
    counts = ", ".join(f"{len(units)} {stage}" for stage, units in changed.items())
    typer.echo(f"re-plan: what these units mean changed (box, parameters or inputs), so they are not done and run "
               f"again: {counts}")
    for path in moved:
        typer.echo(f"re-plan: moved the old model aside to {path} (delete it when you no longer need it)")


def _check_queued_jobs(new_plan) -> None:
    """A re-plan must not change the tiles of tasks still in the queue (see submit.check_replan)."""
    from hpcffn.core.errors import HpcffnError
    from hpcffn.core.plan_model import load_plan
    from hpcffn.jobs.state import recorded
    from hpcffn.jobs.submit import check_replan

    if not recorded(new_plan.layout.state):
        return  # nothing was ever submitted from this workdir
    try:
        old = load_plan(new_plan.layout.plan, tiles=False)  # the jobs are what is compared
    except HpcffnError:
        return  # no earlier plan, or one of another format: nothing was submitted from it by us
    check_replan(old, new_plan)


def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter spec.")] = Path("experiment.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter spec to edit."""
    from hpcffn.plan.starter import write_starter

    write_starter(path, force=force)
    typer.echo(f"wrote {path}: edit it, then run `hpcffn validate {path}` and `hpcffn plan {path}`")


def validate(spec: Annotated[Path, typer.Argument(help="The experiment spec (YAML).")]) -> None:
    """Check a spec and its inputs (files, datasets, shapes, templates); write nothing."""
    from hpcffn.core.errors import HpcffnError
    from hpcffn.plan.inputs import check_inputs
    from hpcffn.plan.planner import check_workdir_owner, make_plan

    planned = make_plan(spec)
    check_workdir_owner(planned, force=False)
    p = planned.plan
    errors, warnings = check_inputs(p)
    for w in planned.warnings + warnings:
        typer.echo(f"warning: {w}", err=True)
    if errors:
        more = f" (and {len(errors) - 1} more: {' | '.join(errors[1:])})" if len(errors) > 1 else ""
        raise HpcffnError(f"{spec}: {errors[0]}{more}")
    counts = ", ".join(_count(n, what) for n, what in ((len(p.volumes), "volume"), (len(p.tiles), "tile"),
                                                       (len(p.groups), "group"), (len(p.jobs), "job")))
    typer.echo(f"{spec}: ok ({counts} into {p.workdir})")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
