"""Per-group inference on the tiny example: infer_g0 starts as soon as train_g0 ends, while
train_g1 still runs, under the local runner and under the test SLURM. The rendered scripts run
tests/jobs_data/fake_stages.py instead of hpcffn (container.command): train_g1 sleeps longer
than everything else, and every run records its start and end times."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import wait_finished

from hpcffn.core.plan_model import load_plan
from hpcffn.jobs.local_runner import run_local
from hpcffn.jobs.submit import submit

REPO = Path(__file__).resolve().parents[1]
FAKE = Path(__file__).parent / "jobs_data" / "fake_stages.py"
SLOW_TRAIN = 8.0


def tiny_with_fake_stages(tmp_path: Path):
    """The tiny example planned with the fake stage command (its data made by make_data.py)."""
    dst = tmp_path / "tiny"
    dst.mkdir()
    subprocess.run([sys.executable, str(REPO / "examples" / "tiny" / "make_data.py"), "--out", str(dst / "data")],
                   check=True, capture_output=True)
    spec = yaml.safe_load((REPO / "examples" / "tiny" / "tiny.yaml").read_text())
    spec["container"] = {"runtime": "none", "command": str(FAKE)}
    spec["cluster"]["defaults"].update(cpus=1, memory="200M", time="00:10:00")
    path = dst / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "plan", str(path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return load_plan(dst / "work")


def runs(plan) -> list[dict]:
    return [json.loads(x) for x in (plan.layout.root / "fake_runs.jsonl").read_text().splitlines()]


def assert_infer_g0_overlaps_train_g1(plan) -> None:
    got = runs(plan)
    train = {r["unit"]: r for r in got if r["stage"] == "train"}
    infer_g0 = [r for r in got if r["job"] == "infer_g0"]
    infer_g1 = [r for r in got if r["job"] == "infer_g1"]
    assert {r["unit"] for r in infer_g0} == set(plan.job("infer_g0").units)
    assert {r["unit"] for r in infer_g1} == set(plan.job("infer_g1").units)
    first_g0 = min(r["start"] for r in infer_g0)
    # g0's tiles start after their own model is trained and while g1's training still runs ...
    assert train["g0"]["end"] <= first_g0 < train["g1"]["end"], (train, infer_g0)
    # ... and g1's tiles wait for g1's model; stitch and evaluate wait for every tile.
    assert min(r["start"] for r in infer_g1) >= train["g1"]["end"]
    stitch = [r for r in got if r["stage"] in ("joins", "resolve", "relabel", "pyramid")]
    evaluate = [r for r in got if r["stage"] == "evaluate"]
    assert {r["stage"] for r in stitch} >= {"joins", "resolve", "relabel"}
    assert min(r["start"] for r in stitch) >= max(r["end"] for r in infer_g0 + infer_g1)
    # evaluate reads the relabelled volume; the pyramid's coarser levels may still be running.
    assert evaluate and evaluate[0]["start"] >= max(r["end"] for r in stitch if r["stage"] != "pyramid")


@pytest.mark.slow
def test_infer_g0_starts_while_train_g1_runs_local(tmp_path, monkeypatch):
    plan = tiny_with_fake_stages(tmp_path)
    assert [d.job for d in plan.job("infer_g0").depends_on] == ["train_g0", "convert"]
    monkeypatch.setenv("FAKE_SLEEP", "0.1")
    monkeypatch.setenv("FAKE_SLEEP_train_g1", str(SLOW_TRAIN))
    assert run_local(plan, echo=lambda *_: None, progress=False, parallel=2)
    assert_infer_g0_overlaps_train_g1(plan)
    # state.json's own records (what `hpcffn status` reads) tell the same order.
    state = json.loads(plan.layout.state.read_text())
    started = {s["job"]: min(t["start"] for t in s["local_tasks"].values()) for s in state["submissions"]}
    ended = {s["job"]: max(t["end"] for t in s["local_tasks"].values()) for s in state["submissions"]}
    assert started["infer_g0"] < ended["train_g1"]


@pytest.mark.slurm
@pytest.mark.slow
def test_infer_g0_starts_while_train_g1_runs_on_slurm(slurm, job_tmp, monkeypatch):
    plan = tiny_with_fake_stages(job_tmp)
    monkeypatch.setenv("FAKE_SLEEP", "0.1")
    monkeypatch.setenv("FAKE_SLEEP_train_g1", str(SLOW_TRAIN + 12))  # SLURM starts jobs every few seconds
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    submit(plan, echo=lambda *_: None)
    report = wait_finished(plan, timeout=600, poll=2)
    for row in report.rows:
        assert row.states == {"COMPLETED": row.tasks}, row
    assert_infer_g0_overlaps_train_g1(plan)
