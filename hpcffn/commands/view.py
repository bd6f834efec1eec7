"""CLI command: `hpcffn view WORKDIR`, the stitched volume in neuroglancer (thin: serve, print, wait)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    app.command("view")(view)


def view(
    plan_dir: Annotated[Path | None, typer.Argument(help="The experiment's workdir (holding plan.json); default: the current directory.")] = None,
    volume: Annotated[str | None, typer.Option("--volume", help="Which volume (default: the first stitched one).")] = None,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to serve on (0: any free port).")] = 0,
    bind: Annotated[str, typer.Option("--bind", help="Address to listen on; 127.0.0.1 keeps it to this machine and ssh tunnels.")] = "127.0.0.1",
) -> None:
    """Show the stitched segmentation, raw image and groundtruth in neuroglancer (Ctrl-C stops)."""
    from hpcffn.core.plan_model import load_plan
    from hpcffn.io.viewer import check_bind, serve

    session = serve(load_plan(plan_dir if plan_dir is not None else Path.cwd()), volume, check_bind(bind), port)
    typer.echo(f"neuroglancer: {session.url}")
    typer.echo(f"layers: {', '.join(session.layers)}")
    typer.echo(f"from your own machine, tunnel first, then open the URL there:\n  {session.ssh}")
    # Ctrl-C and kill stop it cleanly, also where SIGINT came in ignored (a shell's background
    # job, CI runners): Python then installs no KeyboardInterrupt handler of its own.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("hpcffn view: stopped")
    finally:
        # neuroglancer stops its server from the server's own thread and may wait on a request
        # still in flight; Ctrl-C must end the command regardless (its threads are daemons).
        closer = threading.Thread(target=session.close, daemon=True)
        closer.start()
        closer.join(10)
