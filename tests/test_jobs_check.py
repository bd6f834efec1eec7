"""`hpcffn check`: every rendered script runs once in probe mode and reports what the real run
would hit; on this machine (--local) and on the real test SLURM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import repeat

import pytest
from fake_slurm import FakeSlurm
from plan_helpers import spec_dict, write_spec

from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir

HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _planned(folder, spec=None):
    planned = make_plan(write_spec(folder, spec))
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    return planned.plan


def _check(root, *args):
    return subprocess.run([*HPCFFN, "check", str(root), *args], capture_output=True, text=True, timeout=600, check=False)


def test_local_check_runs_every_script_in_probe_mode(job_tmp):
    plan = _planned(job_tmp)
    root = plan.layout.root
    proc = _check(root, "--local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every job script ran on its node" in proc.stdout
    for job in plan.jobs:
        report = json.loads((root / "checks" / f"{job.name}.json").read_text())
        assert report["problems"] == [] and report["stage"] == job.stage and report["hpcffn"] == plan.hpcffn_version
        assert set(report["inputs"]) == {f"{job_tmp}/data/v1.h5:raw", f"{job_tmp}/data/v1.h5:stack"}
    assert json.loads((root / "checks" / "train_g0.json").read_text())["packages"]["tensorflow"]
    # Probe mode did no work and recorded no submission.
    assert not (root / "state.json").exists() and not (root / "partitions").exists()
    # --collect prints the same table from the reports, running nothing.
    again = _check(root, "--collect")
    assert again.returncode == 0 and "train_g0" in again.stdout and "submitted" not in again.stdout


def test_the_joins_probe_asks_for_tensorflow_only_with_resegment(job_tmp):
    for resegment in (True, False):
        ffn = {**spec_dict()["ffn"], "stitch": {"resegment": resegment}}
        plan = _planned(job_tmp / str(resegment), spec_dict(ffn=ffn))
        proc = _check(plan.layout.root, "--local", "--stage", "joins")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads((plan.layout.root / "checks" / "joins.json").read_text())
        assert ("tensorflow" in report["packages"]) == ("gpus" in report) == resegment


def test_local_check_names_unreadable_inputs_and_exits_1(job_tmp):
    plan = _planned(job_tmp)
    (job_tmp / "data" / "v1.h5").rename(job_tmp / "data" / "elsewhere.h5")
    proc = _check(plan.layout.root, "--local", "--stage", "partitions")
    assert proc.returncode == 1
    assert "problems in partitions" in proc.stderr
    report = json.loads((plan.layout.root / "checks" / "partitions.json").read_text())
    assert report["inputs"][f"{job_tmp}/data/v1.h5:raw"].startswith(f"HDF5 file {job_tmp}/data/v1.h5 does not exist")


def test_a_script_that_fails_before_hpcffn_runs_has_no_report(job_tmp):
    plan = _planned(job_tmp)
    script = plan.layout.root / plan.job("resolve").script
    script.write_text(script.read_text().replace("set -euo pipefail\n", "set -euo pipefail\nmodule_that_is_missing\n", 1))
    proc = _check(plan.layout.root, "--local", "--stage", "stitch")
    # The row says why, from the log's own words (here bash's).
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 1 and "no report; the log ends:" in out, proc.stdout
    assert "module_that_is_missing: command not found" in out.replace("│ ", "").replace(" │", ""), proc.stdout


def test_the_cause_line_is_the_last_telling_line_of_the_newest_log(tmp_path):
    from hpcffn.jobs.check import cause_line

    assert cause_line(str(tmp_path / "none_*.out")) is None
    (tmp_path / "a_1.out").write_text("[2026-01-01] exp train_g0 on n1, SLURM job 1\nold failure: error 1\n")
    os.utime(tmp_path / "a_1.out", (1, 1))
    (tmp_path / "a_2.out").write_text(
        "[2026-01-01] exp train_g0 on n1, SLURM job 2\n/var/spool/slurmd/job2/slurm_script: line 40: "
        "apptainer: command not found\n[2026-01-01] train_g0 finished with exit code 127\n\n")
    assert cause_line(str(tmp_path / "a_*.out")).endswith("apptainer: command not found")
    (tmp_path / "b.out").write_text("one\nlast words\n")
    assert cause_line(str(tmp_path / "b.out")) == "last words"
    (tmp_path / "c.out").write_text("")
    assert cause_line(str(tmp_path / "c.out")) == ""


@pytest.mark.slurm
def test_check_on_slurm(job_tmp, slurm):
    plan = _planned(job_tmp)
    root = plan.layout.root
    proc = _check(root, "--timeout", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("submitted as job") == len(plan.jobs)
    for job in plan.jobs:
        report = json.loads((root / "checks" / f"{job.name}.json").read_text())
        assert report["problems"] == [] and report["slurm_job_id"]
    logs = list((root / "logs" / "check").glob("infer_g0_*.out"))
    assert len(logs) == 1 and "hpcffn check: infer_g0 ->" in logs[0].read_text()
    assert not (root / "state.json").exists()


def test_check_waits_for_an_array_check_known_to_slurm_by_its_task(job_tmp):
    from hpcffn.jobs import check, slurm

    plan = _planned(job_tmp)
    asked, polls = [], []

    def fake_query(ids):
        asked.append(list(ids))
        polls.append(1)
        running = slurm.TaskInfo(id="7_0", state="RUNNING") if len(polls) < 3 else slurm.TaskInfo(id="7_0", state="COMPLETED")
        return {"7_0": running}  # squeue lists the running array task, never the bare "7"

    scheduler = FakeSlurm(queue=fake_query, job_ids=repeat("7"))
    check.run_checks(plan, stages=["infer"], timeout=60, poll=0.01, echo=lambda *_: None, scheduler=scheduler)
    assert set(asked[0]) == {"7_0"} and len(polls) == 3  # one infer check per group, each by its task
