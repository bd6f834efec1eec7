"""Shared fixtures: a reachable test SLURM (`slurm`), and a small hand-made plan (`mini_plan`).

`slurm` looks for the private SLURM that tests/slurm/start.sh starts (its env file is named by
HPCFFN_TEST_SLURM_ENV, or found from HPCFFN_TEST_SLURM / SLURM_CONF) and skips with the reason
when none answers. `.ci/run` starts one; by hand:
    env_file=$(bash tests/slurm/start.sh) && . "$env_file" && pytest; bash tests/slurm/stop.sh "$HPCFFN_TEST_SLURM"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hpcffn.core.params import FFNParams
from hpcffn.core.plan_model import (
    Box,
    Dependency,
    GroupPlan,
    JobPlan,
    Plan,
    TilePlan,
    VolumePlan,
    write_plan,
)


def _slurm_env() -> dict[str, str] | None:
    """Environment of the test SLURM from its env file, or the caller's SLURM_CONF."""
    env_file = os.environ.get("HPCFFN_TEST_SLURM_ENV")
    if not env_file and os.environ.get("HPCFFN_TEST_SLURM"):
        env_file = str(Path(os.environ["HPCFFN_TEST_SLURM"]) / "env")
    env: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        for line in Path(env_file).read_text().splitlines():
            if line.startswith("export ") and "=" in line:
                key, val = line[len("export "):].split("=", 1)
                val = val.strip().strip("'\"")
                if key == "PATH":
                    continue
                env[key] = val
    elif os.environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    else:
        return None
    return env


_SLURM_CACHE: dict = {}


def slurm_reachable() -> tuple[dict | None, str]:
    if "result" in _SLURM_CACHE:
        return _SLURM_CACHE["result"]
    env = _slurm_env()
    if env is None:
        result = (None, "no test SLURM: start one with tests/slurm/start.sh and export HPCFFN_TEST_SLURM (bash .ci/run does)")
    elif shutil.which("sbatch") is None:
        result = (None, "sbatch is not installed (apt-get install -y slurm-client)")
    else:
        full = {**os.environ, **env}
        try:
            proc = subprocess.run(["scontrol", "ping"], env=full, capture_output=True, text=True, timeout=15, check=False)
            ok = proc.returncode == 0 and "UP" in proc.stdout
            reason = "" if ok else f"the test SLURM ({env.get('SLURM_CONF')}) does not answer: {proc.stdout.strip()} {proc.stderr.strip()}"
        except subprocess.TimeoutExpired:
            ok, reason = False, "scontrol ping timed out"
        result = (env if ok else None, reason)
    _SLURM_CACHE["result"] = result
    return result


@pytest.fixture
def slurm(monkeypatch):
    """The local test SLURM: sets SLURM_CONF for the test; skips with a reason if none answers."""
    env, reason = slurm_reachable()
    if env is None:
        pytest.skip(reason)
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.setenv("PATH", os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    yield env
    _cancel_leftover_jobs()


def _cancel_leftover_jobs(timeout: float = 60.0) -> None:
    """Cancel whatever a test left in the private test SLURM and wait until it is gone.

    Keeps tests independent: a job still running from one test must not hold the node's CPUs
    while the next test waits for its own job to start.
    """
    import getpass

    user = getpass.getuser()
    subprocess.run(["scancel", f"--user={user}"], check=False, capture_output=True, timeout=30)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "--noheader", f"--user={user}", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING,REQUEUED,SUSPENDED"],
                             check=False, capture_output=True, text=True, timeout=30).stdout
        if not out.strip():
            return
        time.sleep(0.5)


# ------------------------------------------------------------------ a small hand-made plan
SCRIPT = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --output=logs/{stage}/%x_%A_%a.out
#SBATCH --open-mode=append
#SBATCH --time=00:05:00
#SBATCH --cpus-per-task=1
#SBATCH --mem=100M
set -euo pipefail
units=({units})
unit="${{units[${{SLURM_ARRAY_TASK_ID:-0}}]}}"
echo "{stage} $unit job=${{SLURM_JOB_ID}} task=${{SLURM_ARRAY_TASK_ID:-none}} cpus=${{SLURM_CPUS_PER_TASK:-?}}"
if [ -e "fail/{stage}_$unit" ]; then echo "failing on purpose: fail/{stage}_$unit exists" >&2; exit 3; fi
sleep {sleep}
mkdir -p {outdir} markers/{stage}
echo "$unit" > {output}
echo '{{"unit": "'"$unit"'"}}' > "markers/{stage}/$unit.done"
"""

OUTPUTS = {
    "partitions": ("partitions", 'partitions/"$unit".h5'),
    "coordinates": ("coordinates", 'coordinates/"$unit".tfrecord.gz'),
    "train": ("train/$unit", f'train/"$unit"/ckpt-{FFNParams().training.max_steps}.index'),  # the final checkpoint
    "infer": ("infer", 'infer/"$unit".h5'),
    "evaluate": ("evaluate", "evaluate/report.json"),
}


def build_mini_plan(workdir: Path, sleep: float = 0, throttle: int | None = 2) -> Plan:
    """A 3-tile, 2-group plan whose scripts write the layout's outputs and markers (no FFN)."""
    import hashlib

    workdir.mkdir(parents=True, exist_ok=True)
    tiles = [("v_z0_y0_x0", "g0"), ("v_z0_y0_x1", "g1"), ("v_z0_y1_x0", "g0")]
    tile_plans = [
        TilePlan(name=n, volume="v", index=(0, i // 2, i % 2),
                 box=Box(start=(0, 10 * (i // 2), 10 * (i % 2)), size=(10, 10, 10)),
                 infer_box=Box(start=(0, 10 * (i // 2), 10 * (i % 2)), size=(10, 10, 10)), group=g)
        for i, (n, g) in enumerate(tiles)
    ]
    groups = [GroupPlan(name=g, tiles=[n for n, gg in tiles if gg == g], voxels=1000 * sum(gg == g for _, gg in tiles))
              for g in ("g0", "g1")]
    tile_names = [n for n, _ in tiles]
    jobs_def = [("partitions", "partitions", True, tile_names, None, [])]
    for g in ("g0", "g1"):
        jobs_def.append((f"coordinates_{g}", "coordinates", False, [g], g, ["partitions"]))
    for g in ("g0", "g1"):
        jobs_def.append((f"train_{g}", "train", False, [g], g, [f"coordinates_{g}"]))
    jobs_def.append(("infer", "infer", True, tile_names, None, ["train_g0", "train_g1"]))
    jobs_def.append(("evaluate", "evaluate", False, ["experiment"], None, ["infer"]))
    jobs = []
    for name, stage, array, units, group, deps in jobs_def:
        outdir, output = OUTPUTS[stage]
        text = SCRIPT.format(name=name, stage=stage, units=" ".join(units), sleep=sleep, outdir=outdir, output=output)
        rel = f"jobs/{stage}/{name}.sbatch"
        path = workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        jobs.append(JobPlan(name=name, stage=stage, script=rel, sha256=hashlib.sha256(text.encode()).hexdigest(),
                            array=array, units=units, throttle=throttle if array else None, group=group,
                            depends_on=[Dependency(job=d) for d in deps]))
    plan = Plan(hpcffn_version="test", name="mini", workdir=str(workdir), spec_file=str(workdir / "mini.yaml"),
                spec={}, ffn=FFNParams(),
                volumes=[VolumePlan(name="v", shape=(10, 20, 20), raw=f"{workdir}/v.h5:raw", raw_source=f"{workdir}/v.h5:raw")],
                tiles=tile_plans, groups=groups, jobs=jobs)
    write_plan(plan, workdir / "plan.json")
    return plan


@pytest.fixture
def job_tmp():
    """A private temp dir for tests whose SLURM jobs write files while the test waits.

    Not tmp_path: other pytest sessions started meanwhile by the same user prune old
    pytest-N folders, which would pull the workdir from under a running job.
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="hpcffn-jobs-test-"))
    yield path
    if not os.environ.get("HPCFFN_KEEP_TEST_DIRS"):  # set it to read the job logs of a failure
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mini_plan(job_tmp) -> Plan:
    return build_mini_plan(job_tmp / "work")


def wait_finished(plan: Plan, timeout: float = 180.0, poll: float = 1.0):
    """Poll `status` until nothing of the plan is pending or running; return the last report."""
    from hpcffn.jobs.status import collect

    deadline = time.monotonic() + timeout
    while True:
        report = collect(plan)
        if report.finished or time.monotonic() > deadline:
            return report
        time.sleep(poll)
