"""CLI commands `hpcffn report` (the experiment's HTML page and its evaluation table) and `hpcffn verify`
(are the stitched volumes whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcffn.commands.jobs import PLAN_DIR, SPEC, find_plan


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach report and verify to the root app."""
    app.command()(verify)
    app.command()(report)


def verify(plan_dir: Path = PLAN_DIR, spec: Path = SPEC) -> None:
    """Check that the stitched volumes are whole: every chunk of every level present and of the
    length its header records (otherwise the damaged chunks, and a non-zero exit)."""
    from hpcffn.core.errors import HpcffnError
    from hpcffn.jobs.verify import describe, verify_plan

    checks = verify_plan(find_plan(plan_dir, spec))
    for check in checks:
        typer.echo(describe(check))
    damaged = [c for c in checks if c.state == "damaged"]
    if damaged:
        raise HpcffnError(f"{len(damaged)} stitched volume(s) damaged ({', '.join(c.volume for c in damaged)}): "
                          "restore them, or rebuild their stitch as docs/stitch.md says")


def report(
    plan_dir: Path = PLAN_DIR,
    spec: Path = SPEC,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Folder for index.html and its PNGs; default: WORKDIR/report.")] = None,
    tiles: Annotated[int, typer.Option("--tiles", min=0, help="How many tiles to show as slice overlays.")] = 3,
) -> None:
    """Write one HTML page with pictures of the experiment (tile states, training curves,
    evaluation, slice overlays, GPU-hours) and print the evaluation table."""
    from hpcffn.report.build import write_report
    from hpcffn.report.evaluation import evaluation_text

    plan = find_plan(plan_dir, spec)
    html = write_report(plan, output, tiles_shown=tiles)
    typer.echo(evaluation_text(plan))
    typer.echo(f"\nreport: {html}")
