"""CLI command `hpcffn report`: the experiment's HTML page and its evaluation table."""

from __future__ import annotations

from pathlib import Path

import typer

from hpcffn.commands.jobs import PLAN_DIR, SPEC, find_plan


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach report to the root app."""

    @app.command()
    def report(
        plan_dir: Path = PLAN_DIR,
        spec: Path = SPEC,
        output: Path = typer.Option(None, "--output", "-o", help="Folder for index.html and its PNGs; default: WORKDIR/report."),
        tiles: int = typer.Option(3, "--tiles", min=0, help="How many tiles to show as slice overlays."),
    ) -> None:
        """Write one HTML page with pictures of the experiment (tile states, training curves,
        evaluation, slice overlays, GPU-hours) and print the evaluation table."""
        from hpcffn.report.build import write_report
        from hpcffn.report.evaluation import evaluation_text

        plan = find_plan(plan_dir, spec)
        html = write_report(plan, output, tiles_shown=tiles)
        typer.echo(evaluation_text(plan))
        typer.echo(f"\nreport: {html}")
