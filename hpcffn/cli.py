"""The `hpcffn` command: a thin Typer app that parses arguments and calls the modules.

Commands are grouped by area in hpcffn/commands/ (planning, jobs, data stages, model
stages); each module registers its own commands here. Heavy imports (TensorFlow, h5py)
happen inside the command bodies so `hpcffn --help` and planning stay fast on a login node.
"""

from __future__ import annotations

import gc
import os
import sys

import typer

from hpcffn import __version__
from hpcffn.core.errors import DiskFull, HpcffnError
from hpcffn.core.stage_table import EXTRA_PACKAGES, STAGE

app = typer.Typer(
    name="hpcffn",
    help="Run Flood-Filling Networks on a SLURM cluster from one YAML experiment spec.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
stage_app = typer.Typer(
    help="Run one FFN stage: from a plan (--plan plan.json --tile/--group/--volume) or standalone with explicit paths.",
    no_args_is_help=True,
)
app.add_typer(stage_app, name="stage")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hpcffn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Plan, submit and watch an FFN experiment on SLURM."""


@stage_app.callback()
def _stage(ctx: typer.Context) -> None:
    # Stage logs start with what the stage says, not TensorFlow's C++ start-up notices
    # (HPCFFN_TF_LOGS=1 shows them again).
    from hpcffn.core.native_logs import quiet_tensorflow

    quiet_tensorflow()
    # Under `hpcffn check` (HPCFFN_CHECK=<job>) a stage command writes a probe report instead
    # of running: the job script is exercised on its node without doing the work.
    job = os.environ.get("HPCFFN_CHECK")
    facts = STAGE.get(ctx.invoked_subcommand or "")
    if facts and facts.requeues and not job:  # train and infer checkpoint at their time limit
        from hpcffn.core.signals import catch_early

        catch_early()  # before TensorFlow loads: a time-limit USR1 then still checkpoints
    if job and ctx.invoked_subcommand:
        from hpcffn.stages.probe import run_probe

        path = run_probe(job, ctx.invoked_subcommand, sys.argv)
        typer.echo(f"hpcffn check: {job} -> {path}")
        raise typer.Exit(0)


def _register_all() -> None:
    from hpcffn.commands import (
        data_stages,
        jobs,
        model_stages,
        planning,
        reporting,
        stitch_steps,
        view,
    )

    for module in (planning, jobs, reporting, data_stages, model_stages, stitch_steps, view):
        module.register(app, stage_app)


_register_all()


# Imported only by `hpcffn report`.
REPORT_PACKAGES = ("matplotlib", "tensorboard")
# Imported only by `hpcffn view`.
VIEW_PACKAGES = ("neuroglancer",)


def main() -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit code."""
    if sys.argv[1:2] != ["stage"]:
        # Login-node commands build 100,000s of small records (tiles, tasks) and free them at exit:
        # Python's default collector would rescan them over and over (half of `plan`'s time at
        # 100,000 tiles). Stage processes run for days and keep the default.
        gc.set_threshold(100_000, 50, 100)
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)  # click returns (not raises) the code of typer.Exit(n) here
    except HpcffnError as exc:
        print(f"hpcffn: error: {exc}", file=sys.stderr)
        if isinstance(exc, DiskFull):
            # HDF5 may hold a file it could not flush; its exit-time clean-up would crash (exit 139).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("hpcffn: interrupted", file=sys.stderr)
        sys.exit(130)
    except ModuleNotFoundError as exc:
        # A stage command on a base install (a login node): say which extra brings it.
        package = (exc.name or "").split(".")[0]
        if package in REPORT_PACKAGES and not os.environ.get("HPCFFN_DEBUG"):
            print(f"hpcffn: error: this command needs {package}, part of the report extra: "
                  "pip install 'hpcffn[report]'", file=sys.stderr)
            sys.exit(2)
        if package in VIEW_PACKAGES and not os.environ.get("HPCFFN_DEBUG"):
            print(f"hpcffn: error: this command needs {package}, part of the view extra: "
                  "pip install 'hpcffn[view]'", file=sys.stderr)
            sys.exit(2)
        # Stage code's own packages (core/stage_table.py); the base install has all others.
        if os.environ.get("HPCFFN_DEBUG") or package not in EXTRA_PACKAGES:
            raise
        print(f"hpcffn: error: this command needs {exc.name.split('.')[0]}, part of the stage code's extra: "
              "pip install 'hpcffn[ffn]', or run it inside the hpcffn container", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        # Permission denied, disk full, a vanished file: one line naming the file, not a
        # traceback. HPCFFN_DEBUG=1 shows the traceback for a bug report.
        if os.environ.get("HPCFFN_DEBUG"):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"hpcffn: error: {exc.strerror or exc}{where}; fix the path or its permissions "
              "(HPCFFN_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("hpcffn: aborted", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        # typer may vendor its own click (typer._click): recognise its exceptions by shape.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
