"""A profile's per-stage limits hold against the starter's generic defaults, and `hpcffn plan`
prints what each stage gets."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml
from plan_helpers import spec_dict, write_spec

from hpcffn.plan.spec import ClusterSpec, load_profile, stage_resources
from hpcffn.plan.starter import STARTER


def _starter_cluster(profile: str) -> dict:
    cluster = yaml.safe_load(STARTER)["cluster"]
    assert cluster["defaults"]["time"] == "12:00:00"  # the starter's generic limit
    return {**cluster, "profile": profile}


def test_starter_switched_to_ibex_keeps_ibexs_stage_limits(tmp_path):
    cluster = ClusterSpec.model_validate(_starter_cluster("ibex"))
    profile, _ = load_profile("ibex", tmp_path, tmp_path / "x.yaml")
    times = {s: stage_resources(profile, cluster, s).time for s in ("convert", "train", "infer", "stitch")}
    assert times == {"convert": "06:00:00", "train": "5-00:00:00", "infer": "2-00:00:00", "stitch": "12:00:00"}
    # The spec's own per-stage setting still wins, and its defaults beat the profile's defaults.
    cluster = ClusterSpec.model_validate({**_starter_cluster("ibex"), "infer": {"time": "3-00:00:00"},
                                          "defaults": {"time": "12:00:00", "cpus": 2}})
    infer = stage_resources(profile, cluster, "infer")
    assert infer.time == "3-00:00:00" and infer.cpus == 8 and infer.memory == "96G"
    assert stage_resources(profile, cluster, "stitch").cpus == 4  # the profile's stitch setting
    assert stage_resources(profile, ClusterSpec.model_validate({"defaults": {"cpus": 2}}), "train").cpus == 8


def test_plan_prints_the_resolved_time_memory_and_gpus_of_each_stage(tmp_path):
    spec = write_spec(tmp_path, spec_dict(cluster=_starter_cluster("ibex")))
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "plan", str(spec)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"(?m)^│ (\w+)\s+│(.*)│$", proc.stdout)}
    cells = {stage: [c for c in row if c != "│"][-4:] for stage, row in rows.items()}
    assert cells["train"] == ["5-00:00:00", "128G", "8", "1"], proc.stdout
    assert cells["infer"] == ["2-00:00:00", "96G", "8", "1"], proc.stdout
    assert cells["evaluate"] == ["1-00:00:00", "128G", "8", "-"], proc.stdout
    script = (tmp_path / "work" / "jobs" / "infer" / "infer_g0.sbatch").read_text()
    assert "#SBATCH --time=2-00:00:00" in script
