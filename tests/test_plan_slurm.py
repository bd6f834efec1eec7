"""A real SLURM (the local test one) accepts every rendered script: `sbatch --test-only`."""

from __future__ import annotations

import subprocess

import pytest
from plan_helpers import spec_dict, write_spec

from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir


@pytest.mark.slurm
@pytest.mark.parametrize("profile", ["local", "ibex", "generic"])
def test_sbatch_test_only_accepts_rendered_scripts(tmp_path, slurm, profile):
    spec = spec_dict(cluster={"profile": profile, "defaults": {"mail_type": "END,FAIL"},
                              "train": {"extra_sbatch": ["--nice=10", "--comment=hpcffn-test"]}},
                     subvolume={"size": [64, 64, 64], "groups": 2, "array_throttle": 2})
    if profile == "generic":  # no partition in the profile; the test SLURM's default caps CPUs at 2
        spec["cluster"]["defaults"]["partition"] = "batch"
    planned = make_plan(write_spec(tmp_path, spec))
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    for job in planned.plan.jobs:
        script = planned.plan.layout.root / job.script
        proc = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, f"{job.script}: {proc.stderr}"
        assert "to start at" in proc.stderr, proc.stderr


FAKE_WORKER = """#!/bin/bash
# First run: wait for USR1, "save a checkpoint", exit 75. After a requeue: finish (exit 0).
d="$(dirname "$0")"
if [[ -f "$d/checkpoint" ]]; then echo resumed >> "$d/runs"; exit 0; fi
trap 'touch "$d/checkpoint"; echo usr1 >> "$d/runs"; exit 75' USR1
touch "$d/ready"
while :; do sleep 0.2; done
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_usr1_checkpoint_requeues_and_the_job_finishes(slurm):
    """On a real SLURM: USR1 to the batch shell -> worker exits 75 -> scontrol requeue -> rerun -> done."""
    import shutil
    import tempfile
    from pathlib import Path

    # Not tmp_path: pytest sessions started meanwhile (other runs as the same user) prune old
    # pytest-N folders, and the requeued job must still find its files.
    tmp_path = Path(tempfile.mkdtemp(prefix="hpcffn-requeue-"))
    try:
        _requeue_round_trip(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _requeue_round_trip(tmp_path):
    import time

    fake = tmp_path / "fake" / "worker"
    fake.parent.mkdir()
    fake.write_text(FAKE_WORKER)
    fake.chmod(0o755)
    spec = spec_dict(container={"runtime": "none", "command": str(fake)}, stages=["train"])
    planned = make_plan(write_spec(tmp_path, spec))
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    script = planned.plan.layout.root / "jobs" / "train" / "train_g0.sbatch"
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True,
                            timeout=60).stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 120
        while not (fake.parent / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert (fake.parent / "ready").exists(), "the job never started"
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=30)
        deadline = time.monotonic() + 240  # the requeued job must be scheduled again: its own budget
        runs = fake.parent / "runs"
        requeued = False
        while time.monotonic() < deadline and "resumed" not in (runs.read_text() if runs.exists() else ""):
            show = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False,
                                  timeout=30).stdout
            if not requeued and "Restarts=1" in show:
                requeued = True  # it restarts after the requeue hold (cred_expire=10 s in the test SLURM)
            time.sleep(0.5)
        assert requeued
        assert runs.read_text().split() == ["usr1", "resumed"]
        log = next((planned.plan.layout.root / "logs" / "train").glob("*.out")).read_text()
        assert f"requeueing {job_id}" in log and "finished with exit code 0" in log
    finally:
        subprocess.run(["scancel", job_id], check=False, timeout=30)
