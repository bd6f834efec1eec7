"""What `hpcffn status` and `hpcffn check` show: rich tables of their reports, and status's watch loop.

jobs/ works the reports out (status.collect, check.run_checks) as plain records; how they
look on a terminal or in a log is decided here, beside the commands that print them.
"""

from __future__ import annotations

import json
import sys
import time

from hpcffn.core.plan_model import Plan
from hpcffn.jobs.slurm import Slurm
from hpcffn.jobs.status import Report, collect, next_step


def status_table(plan: Plan, report: Report):
    """A rich Table of the status report (one row per job)."""
    from rich.table import Table

    table = Table(title=f"hpcffn status: {plan.name} ({plan.workdir})")
    for col in ("stage", "group", "job", "tasks", "states", "job ids", "outputs", "requeues"):
        table.add_column(col)
    for r in report.rows:
        notes = report.notes_of(r)
        states = ", ".join(f"{k} {n}" for k, n in sorted(r.states.items()))
        outputs = f"{r.outputs}/{r.tasks}"
        if r.tiles is not None:  # several tiles per task
            outputs += f" ({r.tile_outputs}/{r.tiles} tiles)"
        steps, seeds, requeues = notes["steps"], notes["seeds"], notes["requeues"]
        if steps and r.outputs < r.tasks:  # training still has steps to go: show the slowest
            outputs += f" (step {min(steps)}/{plan.ffn.training.max_steps})"
        if seeds:  # tiles part-way through inference (a requeued or running task)
            outputs += f" ({len(seeds)} part-way: seed {sum(d for d, _ in seeds)}/{sum(n for _, n in seeds)})"
        table.add_row(r.stage, r.group, r.job, str(r.tasks), states,
                      " ".join(r.job_ids) or "-", outputs, str(requeues) if requeues else "-")
    return table


def check_table(rows: list[dict]):
    """A rich Table of `hpcffn check`: one row per job with node, versions, GPUs and problems."""
    from rich.table import Table

    table = Table(title="hpcffn check")
    for col in ("job", "node", "hpcffn", "TensorFlow", "GPUs seen", "inputs", "problems"):
        table.add_column(col, overflow="fold")
    for r in rows:
        gpus = r.get("gpus")
        inputs = r.get("inputs") or {}
        table.add_row(
            r["job"], r.get("host", "-"), r.get("hpcffn", "-"),
            (r.get("packages") or {}).get("tensorflow") or "-",
            ", ".join(gpus["seen"]) or "none" if gpus else "-",
            f"{sum(v == 'ok' for v in inputs.values())}/{len(inputs)} readable" if inputs else "-",
            "\n".join(r.get("problems") or []) or "ok",
        )
    return table


def terminal_console():
    """A rich Console: the terminal's width on a terminal, 200 columns piped into a log."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def show(plan: Plan, as_json: bool = False, watch: bool = False, interval: float = 10.0,
         max_interval: float = 120.0, echo=print, scheduler: Slurm | None = None) -> Report:
    """Print the status once, or until nothing is alive with --watch (backing off while idle).

    On a terminal --watch redraws one table in place; piped into a log it prints a table per
    refresh, so the history stays readable.
    """
    from rich.console import Group
    from rich.live import Live

    console = terminal_console()

    def view(report: Report):
        warnings = [f"[yellow]warning:[/yellow] {w}" for w in report.warnings]
        return Group(status_table(plan, report), *warnings)

    def emit(report: Report) -> None:
        if as_json:
            echo(json.dumps(report.as_json(plan), indent=1))
        elif live is not None:
            live.update(view(report), refresh=True)
        else:
            console.print(view(report))

    live = Live(console=console, auto_refresh=False) if (watch and not as_json and console.is_terminal) else None
    delay, last = interval, None
    if live is not None:
        live.start()
    try:
        while True:
            # The table needs counts only; --json and --watch's closing advice need every task.
            report = collect(plan, as_json or watch, scheduler)
            emit(report)
            if not watch or report.finished:
                if watch and not as_json:
                    echo(next_step(plan, report))
                return report
            snapshot = [r.states for r in report.rows]
            delay = interval if snapshot != last else min(delay * 1.5, max_interval)
            last = snapshot
            time.sleep(delay)
    finally:
        if live is not None:
            live.stop()
