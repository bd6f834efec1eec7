"""The local runner and the CLI's bad-input paths, without SLURM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hpcffn.jobs.local_runner import run_local
from hpcffn.jobs.state import load_state
from hpcffn.jobs.status import collect

HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _cli(*args, cwd=None, env=None):
    return subprocess.run([*HPCFFN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False)


def test_local_run_completes_with_slurm_variables(mini_plan):
    assert run_local(mini_plan, echo=lambda *_: None, progress=False)
    report = collect(mini_plan)
    assert report.all_done
    assert all(r.outputs == r.tasks for r in report.rows)
    log = (mini_plan.layout.root / "logs/partitions").glob("partitions_*_1.out")
    text = next(log).read_text()
    assert "task=1 cpus=1" in text
    # A second run runs nothing.
    msgs = []
    assert run_local(mini_plan, echo=msgs.append, progress=False)
    assert msgs and msgs[0].startswith("nothing to run")


def test_local_failure_cancels_dependants_and_resume_reruns_only_the_chain(mini_plan):
    root = mini_plan.layout.root
    (root / "fail").mkdir()
    (root / "fail/coordinates_g1").write_text("")
    assert not run_local(mini_plan, echo=lambda *_: None, progress=False)
    rows = {r.job: r for r in collect(mini_plan).rows}
    assert rows["coordinates_g1"].states == {"FAILED": 1}
    assert rows["train_g1"].states == {"CANCELLED (DependencyNeverSatisfied)": 1}
    assert rows["train_g0"].states == {"COMPLETED": 1}
    assert rows["infer"].states == {"CANCELLED (DependencyNeverSatisfied)": 3}
    before = len(load_state(mini_plan.layout.state).submissions)
    (root / "fail/coordinates_g1").unlink()
    assert run_local(mini_plan, resume=True, echo=lambda *_: None, progress=False)
    subs = load_state(mini_plan.layout.state).submissions[before:]
    assert [s.job for s in subs] == ["coordinates_g1", "train_g1", "infer", "evaluate"]
    assert collect(mini_plan).all_done


def test_local_requeue_exit_75_restarts_the_task(mini_plan):
    script = mini_plan.layout.root / mini_plan.job("train_g0").script
    text = script.read_text()
    # Exit 75 ("checkpoint saved, requeue me") on the first two starts, then succeed.
    patched = text.replace(
        "sleep 0\n",
        'n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count\n'
        'if [ "$n" -lt 2 ]; then echo "restart=$SLURM_RESTART_COUNT local=$HPCFFN_LOCAL"; exit 75; fi\n', 1)
    assert patched != text
    script.write_text(patched)
    assert run_local(mini_plan, stages=["partitions", "coordinates", "train"], groups=["g0"],
                     echo=lambda *_: None, progress=False)
    sub = [s for s in load_state(mini_plan.layout.state).submissions if s.job == "train_g0"][-1]
    assert sub.local_tasks["0"].restarts == 2 and sub.local_tasks["0"].state == "COMPLETED"
    log = (mini_plan.layout.root / sub.local_tasks["0"].log).read_text()
    assert "restart=0 local=1" in log and "restart=1 local=1" in log


def test_status_json_and_logs_cli(mini_plan):
    root = str(mini_plan.layout.root)
    assert _cli("run", root, "--no-progress").returncode == 0
    out = _cli("status", root, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["all_done"] and {r["job"] for r in data["rows"]} >= {"partitions", "evaluate"}
    logs = _cli("logs", "partitions", "v_z0_y0_x1", "--plan-dir", root)
    assert logs.returncode == 0 and "partitions v_z0_y0_x1" in logs.stdout
    bad = _cli("logs", "partitions", "nope", "--plan-dir", root)
    assert bad.returncode == 2 and "no partitions task for 'nope'" in bad.stderr


# ------------------------------------------------------------------------------ bad input
def _one_line_error(proc):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcffn: error:"), proc.stderr
    return lines[0]


def test_no_plan_in_directory(tmp_path):
    assert "no plan at" in _one_line_error(_cli("submit", str(tmp_path)))
    assert "no plan at" in _one_line_error(_cli("status", cwd=tmp_path))


def test_plan_from_another_format_version(mini_plan):
    path = mini_plan.layout.plan
    raw = json.loads(path.read_text())
    raw["format"] = 0
    path.write_text(json.dumps(raw))
    assert "plan format 0" in _one_line_error(_cli("submit", str(mini_plan.layout.root)))


def test_missing_sbatch(mini_plan):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}
    msg = _one_line_error(_cli("submit", str(mini_plan.layout.root), env=env))
    assert "`sbatch` is not on PATH" in msg and "--local" in msg


def test_script_edited_into_invalid_bash(mini_plan):
    script = mini_plan.layout.root / mini_plan.job("infer").script
    script.write_text(script.read_text() + "\nfor x in; do\n")
    msg = _one_line_error(_cli("submit", str(mini_plan.layout.root), "--dry-run"))
    assert "infer.sbatch is not valid bash" in msg
    msg = _one_line_error(_cli("run", str(mini_plan.layout.root)))
    assert "infer.sbatch is not valid bash" in msg


def test_watch_backs_off_while_nothing_changes(mini_plan, monkeypatch):
    from dataclasses import replace

    import hpcffn.commands.job_views as views
    from hpcffn.jobs.status import Report, StatusRow

    alive = StatusRow(job="a", stage="train", group="g0", tasks=1, counts={"alive": 1},
                                 states={"RUNNING": 1}, job_ids=["1"], outputs=0, detail=[])
    done = replace(alive, counts={"done": 1}, states={"COMPLETED": 1})
    reports = [Report(rows=[alive]) for _ in range(4)] + [Report(rows=[done])]
    monkeypatch.setattr(views, "collect", lambda plan, *_: reports.pop(0))
    sleeps = []
    monkeypatch.setattr(views.time, "sleep", sleeps.append)
    final = views.show(mini_plan, as_json=True, watch=True, interval=10, max_interval=20, echo=lambda *_: None)
    assert final.all_done
    assert sleeps == [10, 15, 20, 20]


def test_submit_local_flag_runs_here(mini_plan):
    out = _cli("submit", str(mini_plan.layout.root), "--local")
    assert out.returncode == 0, out.stderr
    assert collect(mini_plan).all_done


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_cancel_stops_a_local_run(job_tmp, parallel):
    import time

    from conftest import build_mini_plan

    plan = build_mini_plan(job_tmp / "work", sleep=30, throttle=None)
    root = str(plan.layout.root)
    runner = subprocess.Popen([*HPCFFN, "run", root, "--no-progress", "--parallel", parallel], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not collect(plan).rows[0].counts.get("alive"):
            time.sleep(0.2)
        out = _cli("cancel", root)
        assert out.returncode == 0 and "stopped the local runner" in out.stdout
        _, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 2 and err.strip().splitlines() == [
        "hpcffn: error: the local run was stopped (SIGTERM, e.g. `hpcffn cancel`); `hpcffn run --resume` continues it"]
    rows = {r.job: r for r in collect(plan).rows}
    assert rows["partitions"].states == {"CANCELLED": 3}
    assert rows["evaluate"].states == {"NOT SUBMITTED": 1}


def test_status_shows_training_progress_from_the_checkpoint_index(mini_plan):
    from hpcffn.commands.job_views import status_table
    from hpcffn.jobs.status import checkpoint_step

    max_steps = mini_plan.ffn.training.max_steps
    train_dir = mini_plan.layout.train_dir("g0")
    assert checkpoint_step(train_dir) is None
    train_dir.mkdir(parents=True)
    # What tf.train.CheckpointManager writes after saving at step 1200 (checkpoints are numbered by step).
    (train_dir / "checkpoint").write_text(
        f'model_checkpoint_path: "ckpt-1200"\nall_model_checkpoint_paths: "ckpt-{max_steps}"\n'
        'all_model_checkpoint_paths: "ckpt-1200"\n')
    (train_dir / "ckpt-1200.index").write_text("")
    assert checkpoint_step(train_dir) == 1200
    rows = {r.job: r for r in collect(mini_plan).rows}
    assert rows["train_g0"].detail[0]["step"] == 1200
    assert rows["train_g0"].outputs == 0  # a partial checkpoint is not the trained model
    assert rows["train_g1"].detail[0]["step"] is None

    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(status_table(mini_plan, collect(mini_plan)))
    text = console.export_text()
    assert f"0/1 (step 1200/{max_steps})" in text and f"0/1 (step 0/{max_steps})" in text

    (train_dir / "checkpoint").write_text(f'model_checkpoint_path: "{train_dir}/ckpt-{max_steps}"\n')
    (train_dir / f"ckpt-{max_steps}.index").write_text("")
    rows = {r.job: r for r in collect(mini_plan).rows}
    assert rows["train_g0"].outputs == 1 and rows["train_g0"].detail[0]["step"] == max_steps


def test_status_shows_how_far_unfinished_inference_got(mini_plan):
    import numpy as np

    from hpcffn.commands.job_views import status_table
    from hpcffn.ffn.inference import save_state
    from hpcffn.stages.infer import state_path

    tile = mini_plan.tiles[1].name
    out = mini_plan.layout.segmentation(tile)
    save_state(state_path(out), np.zeros((2, 2, 2), np.uint64), np.zeros((40, 3), np.int64), 12, 5, "fp")
    rows = {r.job: r for r in collect(mini_plan).rows}
    assert [t.get("seeds") for t in rows["infer"].detail] == [None, (12, 40), None]
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(status_table(mini_plan, collect(mini_plan)))
    assert "0/3 (1 part-way: seed 12/40)" in console.export_text()


def _patch_partitions(plan, body: str) -> None:
    script = plan.layout.root / plan.job("partitions").script
    text = script.read_text()
    script.write_text(text.replace("sleep 0\n", body, 1))
    assert script.read_text() != text


def test_parallel_runs_array_tasks_at_the_same_time(job_tmp):
    from conftest import build_mini_plan

    plan = build_mini_plan(job_tmp / "work", throttle=None)
    # Each task waits (up to 60 s) until all three have started: one at a time, the first fails.
    _patch_partitions(plan, 'mkdir -p started; touch "started/$unit"\n'
                            'for _ in $(seq 600); do [ "$(ls started | wc -l)" -ge 3 ] && break; sleep 0.1; done\n'
                            '[ "$(ls started | wc -l)" -ge 3 ] || { echo "alone" >&2; exit 4; }\n'
                            'echo "gpu growth=${TF_FORCE_GPU_ALLOW_GROWTH:-unset}"\n')
    assert run_local(plan, stages=["partitions"], echo=lambda *_: None, progress=False, parallel=3)
    assert collect(plan).rows[0].states == {"COMPLETED": 3}
    # Tasks sharing one GPU must not each take all of its memory.
    logs = [p.read_text() for p in (plan.layout.root / "logs" / "partitions").glob("*.out")]
    assert len(logs) == 3 and all("gpu growth=true" in text for text in logs)


def test_parallel_never_exceeds_the_array_throttle(job_tmp):
    from conftest import build_mini_plan

    plan = build_mini_plan(job_tmp / "work", throttle=2)
    _patch_partitions(plan, 'mkdir -p running; touch "running/$unit"; ls running | wc -l >> seen; sleep 1; rm "running/$unit"\n')
    assert run_local(plan, stages=["partitions"], echo=lambda *_: None, progress=False, parallel=8)
    seen = [int(v) for v in (plan.layout.root / "seen").read_text().split()]
    assert len(seen) == 3 and max(seen) <= 2


def test_parallel_must_be_positive(mini_plan):
    assert "--parallel 0" in _one_line_error(_cli("run", str(mini_plan.layout.root), "--parallel", "0"))


def _patch_job(plan, name: str, body: str) -> None:
    script = plan.layout.root / plan.job(name).script
    text = script.read_text()
    script.write_text(text.replace("sleep 0\n", body, 1))
    assert script.read_text() != text


def test_parallel_runs_independent_jobs_at_the_same_time(job_tmp):
    from conftest import build_mini_plan

    plan = build_mini_plan(job_tmp / "work")
    # coordinates_g0 and coordinates_g1 depend only on partitions: each waits for the other.
    wait_both = ('mkdir -p both; touch "both/$unit"\n'
                 'for _ in $(seq 600); do [ "$(ls both | wc -l)" -ge 2 ] && break; sleep 0.1; done\n'
                 '[ "$(ls both | wc -l)" -ge 2 ] || { echo "alone" >&2; exit 4; }\n')
    for name in ("coordinates_g0", "coordinates_g1"):
        _patch_job(plan, name, wait_both)
    assert run_local(plan, stages=["partitions", "coordinates"], echo=lambda *_: None, progress=False, parallel=2)
    rows = {r.job: r for r in collect(plan).rows}
    assert rows["coordinates_g0"].states == rows["coordinates_g1"].states == {"COMPLETED": 1}


def test_parallel_caps_the_tasks_of_all_jobs_together(job_tmp):
    from conftest import build_mini_plan

    plan = build_mini_plan(job_tmp / "work", throttle=None)
    count = 'mkdir -p running; touch "running/$SLURM_JOB_NAME.$unit"; ls running | wc -l >> seen; sleep 1; rm "running/$SLURM_JOB_NAME.$unit"\n'
    for name in ("coordinates_g0", "coordinates_g1", "train_g0", "train_g1"):
        _patch_job(plan, name, count)
    assert run_local(plan, stages=["partitions", "coordinates", "train"], echo=lambda *_: None, progress=False,
                     parallel=2)
    seen = [int(v) for v in (plan.layout.root / "seen").read_text().split()]
    assert len(seen) == 4 and max(seen) <= 2
