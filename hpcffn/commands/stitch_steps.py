"""CLI commands: `hpcffn stage joins|resolve|relabel|pyramid`, the four steps of the planned stitch.

Thin: each takes the plan and the array task's unit (index or name) and calls the stage module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import load_plan

_PLAN = Annotated[Path, typer.Option("--plan", help="plan.json (or its workdir).")]


def _unit(plan, job: str, key: str | None, flag: str) -> str:
    if key is None:
        raise HpcffnError(f"give {flag} NAME|INDEX (the array task id in the rendered script)")
    return str(plan.task_unit(job, key))


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    stage_app.command("joins")(joins)
    stage_app.command("resolve")(resolve)
    stage_app.command("relabel")(relabel)
    stage_app.command("pyramid")(pyramid)


def joins(plan: _PLAN, tile: Annotated[str | None, typer.Option(help="Tile name or index.")] = None) -> None:
    """Stitch step 1: the segments this tile agrees on with its neighbours, where they overlap."""
    from hpcffn.stages.joins import run_from_plan

    p = load_plan(plan)
    run_from_plan(p, _unit(p, "joins", tile, "--tile"))


def resolve(plan: _PLAN, volume: Annotated[str | None, typer.Option(help="Volume name or index.")] = None) -> None:
    """Stitch step 2: all tiles' joins -> final ids of one volume; makes its empty OME-Zarr store."""
    from hpcffn.stages.resolve import run_from_plan

    p = load_plan(plan)
    run_from_plan(p, _unit(p, "resolve", volume, "--volume"))


def relabel(plan: _PLAN, tile: Annotated[str | None, typer.Option(help="Tile name or index.")] = None) -> None:
    """Stitch step 3: write this tile's core, with final ids, and its raw image into the OME-Zarr volume."""
    from hpcffn.stages.relabel import run_from_plan

    p = load_plan(plan)
    run_from_plan(p, _unit(p, "relabel", tile, "--tile"))


def pyramid(
    plan: _PLAN,
    block: Annotated[str | None, typer.Option(help="Block name (<volume>_s<level>_b<k>) or index in --job.")] = None,
    job: Annotated[str | None, typer.Option(help="The pyramid_s<level> job whose units an index counts in.")] = None,
) -> None:
    """Stitch step 4: one block of one pyramid level (labels by mode, raw by mean)."""
    from hpcffn.stages.pyramid import run_from_plan

    p = load_plan(plan)
    if block is not None and block.isdigit() and job is None:
        raise HpcffnError("--block as an index needs --job pyramid_s<level> (the rendered script passes it)")
    run_from_plan(p, _unit(p, job or "pyramid", block, "--block"))
