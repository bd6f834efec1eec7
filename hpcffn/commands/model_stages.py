"""CLI commands: model_stages (placeholder module, filled by its owner)."""

import typer


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach this area's commands to the root app and the `stage` sub-app."""
