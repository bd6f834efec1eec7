"""A real SLURM (the local test one) accepts every rendered script: `sbatch --test-only`."""

from __future__ import annotations

import subprocess

import pytest
from plan_helpers import spec_dict, write_spec

from hpcffn.planner import make_plan
from hpcffn.render import write_workdir


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
