"""What `status`, `status --watch` and `logs` tell about runs: the requeue count in the table,
the next command when watching ends, and the log of every run of a job."""

from __future__ import annotations

import subprocess
import sys

from hpcffn.commands.job_views import show, status_table
from hpcffn.jobs.admin import log_paths
from hpcffn.jobs.local_runner import run_local
from hpcffn.jobs.status import collect, next_step

HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _table_text(plan) -> str:
    from rich.console import Console

    console = Console(width=250)
    with console.capture() as captured:
        console.print(status_table(plan, collect(plan)))
    return captured.get()


def _fail_then_resume(plan):
    root = plan.layout.root
    (root / "fail").mkdir()
    (root / "fail/coordinates_g1").write_text("")
    assert not run_local(plan, echo=lambda *_: None, progress=False)
    return root


def test_watch_ends_with_the_next_command(mini_plan):
    root = _fail_then_resume(mini_plan)
    lines = []
    show(mini_plan, watch=True, interval=1, echo=lines.append)
    assert lines[-1].startswith("next: 1 task(s) failed or were cancelled (5 more cancelled because they depend "
                                "on them); read `hpcffn logs coordinates g1 --plan-dir")
    assert lines[-1].endswith(f"then `hpcffn run {root} --resume`")
    (root / "fail/coordinates_g1").unlink()
    assert run_local(mini_plan, resume=True, echo=lambda *_: None, progress=False)
    assert next_step(mini_plan, collect(mini_plan)) == (
        f"next: every job is done; `hpcffn report {root}` writes the page with the results")


def test_logs_lists_every_run_oldest_first(mini_plan):
    root = _fail_then_resume(mini_plan)
    (root / "fail/coordinates_g1").unlink()
    assert run_local(mini_plan, resume=True, echo=lambda *_: None, progress=False)
    paths = log_paths(mini_plan, "coordinates", "g1")
    assert len(paths) == 2 and paths[0] != paths[1]
    assert paths[0].stat().st_mtime <= paths[1].stat().st_mtime
    proc = subprocess.run([*HPCFFN, "logs", "coordinates", "g1", "--plan-dir", str(root)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("==> ")] == [f"==> {p} <==" for p in paths]


def test_status_table_shows_the_requeue_count(mini_plan):
    from hpcffn.jobs.state import updating

    assert run_local(mini_plan, echo=lambda *_: None, progress=False)
    assert "requeues" in _table_text(mini_plan)
    with updating(mini_plan.layout.state) as state:
        sub = next(s for s in state.submissions if s.job == "infer")
        sub.local_tasks["1"].restarts = 2
        sub.local_tasks["2"].restarts = 1
    row = next(line for line in _table_text(mini_plan).splitlines() if " infer " in line)
    assert row.rstrip(" │").split()[-1] == "3", row
