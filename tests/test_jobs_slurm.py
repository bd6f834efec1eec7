"""hpcffn submit / status / cancel / logs against the real local test SLURM (tests/slurm/)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import build_mini_plan, wait_finished

from hpcffn.jobs.state import load_state
from hpcffn.jobs.status import collect
from hpcffn.jobs.submit import submit

pytestmark = pytest.mark.slurm

HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _cli(*args, cwd=None, timeout=120):
    return subprocess.run([*HPCFFN, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)


def _quiet(*_):
    pass


def test_pipeline_completes_and_second_submit_submits_nothing(slurm, mini_plan):
    made = submit(mini_plan, echo=_quiet)
    assert made[0].job == "partitions" and len(made) == 7
    report = wait_finished(mini_plan, timeout=240)
    assert report.all_done, report.rows
    for row in report.rows:
        assert row.states == {"COMPLETED": row.tasks}, row
        assert row.outputs == row.tasks, row
        assert all(t["source"] == "squeue" for t in row.detail)
    out = _cli("status", str(mini_plan.layout.root))
    assert out.returncode == 0 and "COMPLETED" in out.stdout and "evaluate" in out.stdout
    again = _cli("submit", str(mini_plan.layout.root))
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    assert len(load_state(mini_plan.layout.state).submissions) == 7
    logs = _cli("logs", "infer", "v_z0_y1_x0", "--plan-dir", str(mini_plan.layout.root))
    assert logs.returncode == 0 and "infer v_z0_y1_x0" in logs.stdout


def test_failed_array_task_then_resume_resubmits_only_its_chain(slurm, mini_plan):
    root = mini_plan.layout.root
    (root / "fail").mkdir()
    (root / "fail/partitions_v_z0_y0_x1").write_text("")  # task 1 of 3, group g1
    submit(mini_plan, echo=_quiet)
    report = wait_finished(mini_plan, timeout=240)
    rows = {r.job: r for r in report.rows}
    assert rows["partitions"].states == {"COMPLETED": 2, "FAILED": 1}
    for name in ("coordinates_g0", "coordinates_g1", "train_g0", "train_g1", "infer", "evaluate"):
        assert set(rows[name].states) == {"CANCELLED (DependencyNeverSatisfied)"}, rows[name]
    # Dependants never ran: no outputs, no markers.
    assert not (root / "markers/coordinates").exists() and not (root / "infer").exists()
    status = _cli("status", str(root))
    assert "FAILED" in status.stdout and "DependencyNeverSatisfied" in status.stdout

    (root / "fail/partitions_v_z0_y0_x1").unlink()
    before = len(load_state(mini_plan.layout.state).submissions)
    made = submit(mini_plan, resume=True, echo=_quiet)
    assert made[0].job == "partitions" and made[0].tasks == [1]
    assert "--array=1%2" in made[0].command
    assert made[1].command[2].startswith("--dependency=afterok:")
    assert [s.job for s in made[1:]] == ["coordinates_g0", "coordinates_g1", "train_g0", "train_g1", "infer", "evaluate"]
    report = wait_finished(mini_plan, timeout=240)
    assert report.all_done, report.rows
    # Task 0 and 2 ran once (job 1), task 1 twice.
    part_logs = sorted(p.name for p in (root / "logs/partitions").iterdir())
    assert len(part_logs) == 4, part_logs
    assert len(load_state(mini_plan.layout.state).submissions) == before + 7
    again = submit(mini_plan, resume=True, echo=_quiet)
    assert again == []


def test_dry_run_prints_commands_sbatch_accepts(slurm, mini_plan, job_tmp):
    out = _cli("submit", str(mini_plan.layout.root), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert not mini_plan.layout.state.exists() or load_state(mini_plan.layout.state).submissions == []
    lines = out.stdout.splitlines()
    first = next(line for line in lines if line.startswith("JOB_partitions="))
    # sbatch --test-only accepts the first call as printed (the others need the ids it prints).
    cmd = first.split("$(", 1)[1].rsplit("| cut", 1)[0]
    check = subprocess.run(f"cd {mini_plan.layout.root} && mkdir -p logs/partitions && "
                           f"{cmd.replace('sbatch --parsable', 'sbatch --test-only', 1)}",
                           shell=True, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "to start at" in check.stderr, check.stderr
    # Run by hand, the whole printed script submits the pipeline, and it completes.
    script = job_tmp / "submit.sh"
    script.write_text(out.stdout)
    for stage in ("partitions", "coordinates", "train", "infer", "evaluate"):
        (mini_plan.layout.root / "logs" / stage).mkdir(parents=True, exist_ok=True)
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False, timeout=60)
    assert ran.returncode == 0, ran.stderr
    ids = dict(line.split(": ", 1) for line in ran.stdout.splitlines())
    assert set(ids) == {j.name for j in mini_plan.jobs}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        marker = mini_plan.layout.marker("evaluate", "experiment")
        if marker.exists():
            break
        time.sleep(1)
    assert mini_plan.layout.marker("evaluate", "experiment").exists()


def test_cancel_by_stage_and_all(slurm, job_tmp):
    plan = build_mini_plan(job_tmp / "work", sleep=60)
    submit(plan, echo=_quiet)
    out = _cli("cancel", str(plan.layout.root), "--stage", "evaluate")
    assert out.returncode == 0 and "cancelled 1 task" in out.stdout
    rows = {r.job: r for r in collect(plan).rows}
    assert set(rows["evaluate"].states) == {"CANCELLED"}
    assert rows["partitions"].counts.get("alive") == 3
    out = _cli("cancel", str(plan.layout.root))
    assert out.returncode == 0
    report = wait_finished(plan, timeout=60)
    assert report.finished and not report.all_done
    assert all(r.counts.get("failed", 0) == r.tasks for r in report.rows), report.rows
    out = _cli("status", str(plan.layout.root), "--json")
    assert json.loads(out.stdout)["finished"]


def test_script_changed_under_a_pending_job_is_refused(slurm, job_tmp):
    plan = build_mini_plan(job_tmp / "work", sleep=60)
    submit(plan, echo=_quiet)
    try:
        script = plan.layout.root / plan.job("evaluate").script
        script.write_text(script.read_text() + "echo edited\n")
        out = _cli("submit", str(plan.layout.root), "--resume")
        assert out.returncode == 2
        assert "evaluate.sbatch changed after it was submitted" in out.stderr and "cancel" in out.stderr
    finally:
        _cli("cancel", str(plan.layout.root))


def test_squeue_sacct_and_scontrol_agree_on_finished_work(slurm, job_tmp):
    """Each source status reads, alone, gives the same states (sacct when accounting answers)."""
    from hpcffn.jobs import slurm as slurm_mod

    plan = build_mini_plan(job_tmp / "work")
    (plan.layout.root / "fail").mkdir()
    (plan.layout.root / "fail/partitions_v_z0_y1_x0").write_text("")
    submit(plan, echo=_quiet)
    wait_finished(plan, timeout=240)
    subs = load_state(plan.layout.state).submissions
    ids = [s.task_id(t) for s in subs for t in (s.tasks if s.tasks is not None else [None])]
    squeue = slurm_mod.Slurm().query(ids, sources=("squeue",))
    scontrol = slurm_mod.Slurm().query(ids, sources=("scontrol",))
    expect = {i: squeue[i].state for i in ids}
    assert expect[f"{subs[0].job_id}_2"] == "FAILED" and expect[f"{subs[0].job_id}_0"] == "COMPLETED"
    assert {i: v.state for i, v in scontrol.items()} == expect
    assert all(v.source == "scontrol" for v in scontrol.values())
    probe = subprocess.run(["sacct", "-n", "-X", "-j", subs[0].job_id], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no SLURM accounting here (sacct: {probe.stderr.strip()}); squeue and scontrol checked")
    deadline = time.monotonic() + 30  # slurmdbd receives job records asynchronously
    while True:
        sacct = slurm_mod.Slurm().query(ids, sources=("sacct",))
        if {i: v.state for i, v in sacct.items()} == expect or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert {i: v.state for i, v in sacct.items()} == expect
    assert all(v.source == "sacct" for v in sacct.values())
