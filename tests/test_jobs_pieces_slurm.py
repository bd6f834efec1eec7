"""A 30-task array on a real SLURM whose MaxArraySize is 11: submit splits it into pieces
(0-10, then 0-10 and 0-7 with HPCFFN_ARRAY_OFFSET 11 and 22), every task works on its own
tile, the stitch job waits for all pieces, and status, logs and cancel see one job.

Starts its own private SLURM (tests/slurm/start.sh with HPCFFN_TEST_MAX_ARRAY_SIZE=11, no
accounting) beside the shared test SLURM, and stops it at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import slurm_reachable, wait_finished
from plan_helpers import spec_dict, write_h5, write_spec

from hpcffn.core.plan_model import load_plan
from hpcffn.jobs import slurm as slurm_mod
from hpcffn.jobs.admin import log_paths
from hpcffn.jobs.state import load_state
from hpcffn.jobs.submit import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent
FAKE = HERE / "jobs_data" / "fake_stages.py"


@pytest.fixture(scope="module")
def small_array_slurm():
    """A private SLURM with MaxArraySize=11; yields its environment."""
    env, reason = slurm_reachable()
    if env is None:
        pytest.skip(reason)
    state = Path(tempfile.mkdtemp(prefix="hpcffn-slurm-maxarray-"))
    full = {**os.environ, "HPCFFN_TEST_MAX_ARRAY_SIZE": "11", "HPCFFN_TEST_ACCOUNTING": "0",
            "PATH": os.environ["PATH"] + ":/usr/sbin:/sbin"}
    full.pop("SLURM_CONF", None)
    proc = subprocess.run(["bash", str(HERE / "slurm" / "start.sh"), str(state)], env=full, capture_output=True,
                          text=True, timeout=300, check=False)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield {"SLURM_CONF": str(state / "slurm.conf"), "HPCFFN_TEST_SLURM": str(state)}
    finally:
        subprocess.run(["bash", str(HERE / "slurm" / "stop.sh"), str(state), "--purge"], env=full,
                       capture_output=True, timeout=120, check=False)


def test_thirty_tasks_split_run_and_show_as_one_job(small_array_slurm, job_tmp, monkeypatch):
    for key, val in small_array_slurm.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv("PATH", os.environ["PATH"] + ":/usr/sbin:/sbin")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_SLEEP", "0.1")
    spec = spec_dict(stages=["infer", "stitch"], subvolume={"size": [21, 21, 21], "overlap": [2, 2, 2], "groups": 1},
                     ffn={**spec_dict()["ffn"], "inference": {"checkpoint": "model/ckpt-1"}},
                     cluster={"profile": "local", "defaults": {"cpus": 1, "memory": "100M", "time": "00:05:00"}},
                     container={"runtime": "none", "command": str(FAKE)})
    path = write_spec(job_tmp, spec, data=False)
    write_h5(job_tmp / "data" / "v1.h5", shape=(21, 105, 126))  # 1 x 5 x 6 = 30 tiles
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "plan", str(path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    plan = load_plan(job_tmp / "work")
    units = plan.job("infer_g0").units
    assert len(units) == 30
    # This SLURM really refuses the whole array.
    ok, msg = slurm_mod.Slurm().test_only(slurm_mod.sbatch_command(plan.job("infer_g0").script, "0-29"), plan.layout.root)
    assert not ok, msg
    assert slurm_mod.Slurm().array_limits()[0] == 11

    lines: list[str] = []
    made = submit(plan, echo=lines.append)
    pieces = [s for s in made if s.job == "infer_g0"]
    assert [(s.array_offset, s.tasks[0], s.tasks[-1]) for s in pieces] == [(0, 0, 10), (11, 11, 21), (22, 22, 29)]
    assert any("piece 3/3, offset 22" in x for x in lines), lines
    report = wait_finished(plan, timeout=400, poll=2)
    rows = {r.job: r for r in report.rows}
    assert rows["infer_g0"].states == {"COMPLETED": 30}, rows["infer_g0"]
    assert rows["infer_g0"].job_ids == sorted(s.job_id for s in pieces) and rows["infer_g0"].outputs == 30
    assert rows["resolve"].states == {"COMPLETED": 1} and rows["relabel"].states == {"COMPLETED": 30}

    # Each SLURM task id of each piece worked on the plan's unit at task id + offset, once.
    offsets = {s.job_id: s.array_offset for s in pieces}
    got = [json.loads(x) for x in (plan.layout.root / "fake_runs.jsonl").read_text().splitlines()]
    infer = [r for r in got if r["stage"] == "infer"]
    assert sorted(r["unit"] for r in infer) == sorted(units)
    for r in infer:
        assert r["unit"] == units[int(r["slurm_task"]) + offsets[r["slurm_job"]]], r
    joins = [r for r in got if r["stage"] == "joins"]  # stitch's first step
    assert min(r["start"] for r in joins) >= max(r["end"] for r in infer)  # afterok on every piece

    # One job for the CLI too: one status row, logs found through the piece's own task id.
    status = subprocess.run([sys.executable, "-m", "hpcffn.cli", "status", str(plan.layout.root)],
                            capture_output=True, text=True, check=False)
    infer_rows = [x for x in status.stdout.splitlines() if "infer_g0" in x]
    assert len(infer_rows) == 1 and "COMPLETED 30" in infer_rows[0], status.stdout
    log = log_paths(plan, "infer", units[25])
    assert len(log) == 1 and f"fake infer {units[25]} done" in log[0].read_text()
    state = load_state(plan.layout.state)
    assert {"infer_g0", "joins", "resolve", "relabel"} <= {s.job for s in state.submissions}
    assert [s.array_offset for s in state.submissions if s.job == "infer_g0"] == [0, 11, 22]
    # Nothing is left to submit, and resume finds nothing failed in any piece.
    lines.clear()
    assert submit(plan, resume=True, echo=lines.append) == [] and "nothing to submit" in lines[-1]
