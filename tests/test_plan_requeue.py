"""The rendered train/infer scripts' signal protocol, run for real with a fake hpcffn and scontrol."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from plan_helpers import write_spec

from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir

FAKE_HPCFFN = """#!/bin/bash
echo "$@" > "$FAKE_DIR/args"
case "$FAKE_MODE" in
  done) exit 0 ;;
  fail) exit 3 ;;
  requeue) exit 75 ;;
  checkpoint)
    trap 'echo USR1 >> "$FAKE_DIR/signals"; exit 75' USR1
    trap 'echo TERM >> "$FAKE_DIR/signals"; exit 75' TERM
    touch "$FAKE_DIR/ready"
    while :; do sleep 0.05; done ;;
esac
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_DIR/scontrol"
"""


@pytest.fixture
def rendered(tmp_path):
    spec_path = write_spec(tmp_path)
    planned = make_plan(spec_path)
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("hpcffn", FAKE_HPCFFN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def start(root: Path, script: str, mode: str, **env) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "HPCFFN_"))}
    full_env.update(PATH=f"{root / 'bin'}:{os.environ['PATH']}", FAKE_DIR=str(root), FAKE_MODE=mode, **env)
    return subprocess.Popen(["bash", str(root / "work" / "jobs" / script)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, proc: subprocess.Popen) -> None:
    for _ in range(400):
        if path.exists() or proc.poll() is not None:
            return
        time.sleep(0.05)


def read(root: Path, name: str) -> str:
    p = root / name
    return p.read_text() if p.exists() else ""


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_is_forwarded_and_local_run_exits_75(rendered, sig):
    proc = start(rendered, "train/train_g0.sbatch", "checkpoint", HPCFFN_LOCAL="1")
    wait_for(rendered / "ready", proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert read(rendered, "signals").split() == [sig.name.removeprefix("SIG")]
    assert read(rendered, "args").split() == ["stage", "train", "--plan", f"{rendered}/work/plan.json", "--group", "g0"]
    assert read(rendered, "scontrol") == ""


@pytest.mark.parametrize("signals,requeued", [
    ([signal.SIGTERM], False),  # scancel: a requeue would bring the cancelled job back
    ([signal.SIGUSR1], True),  # the time-limit warning from --signal
])
def test_requeue_after_usr1_but_not_after_a_bare_term(rendered, signals, requeued):
    proc = start(rendered, "train/train_g0.sbatch", "checkpoint", SLURM_JOB_ID="77")
    wait_for(rendered / "ready", proc)
    for sig in signals:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert read(rendered, "scontrol").split() == (["requeue", "77"] if requeued else [])


def test_exit_75_requeues_plain_job(rendered):
    proc = start(rendered, "train/train_g1.sbatch", "requeue", SLURM_JOB_ID="123")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert read(rendered, "scontrol").split() == ["requeue", "123"]


def test_exit_75_requeues_array_task(rendered):
    proc = start(rendered, "infer/infer_g0.sbatch", "requeue", SLURM_JOB_ID="130", SLURM_ARRAY_JOB_ID="127",
                 SLURM_ARRAY_TASK_ID="2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert read(rendered, "scontrol").split() == ["requeue", "127_2"]
    assert read(rendered, "args").split()[-4:] == ["--job", "infer_g0", "--tile", "2"]


def test_array_piece_offset_maps_task_ids_back_to_plan_units(rendered):
    """A piece of a split array (MaxArraySize) runs task id 2 as unit 2 + HPCFFN_ARRAY_OFFSET; SLURM ids stay its own."""
    proc = start(rendered, "infer/infer_g0.sbatch", "requeue", SLURM_JOB_ID="140", SLURM_ARRAY_JOB_ID="138",
                 SLURM_ARRAY_TASK_ID="2", HPCFFN_ARRAY_OFFSET="11")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert read(rendered, "args").split()[-2:] == ["--tile", "13"]
    assert read(rendered, "scontrol").split() == ["requeue", "138_2"]
    proc = start(rendered, "infer/infer_g0.sbatch", "done", SLURM_JOB_ID="141", SLURM_ARRAY_JOB_ID="138",
                 SLURM_ARRAY_TASK_ID="2", HPCFFN_ARRAY_OFFSET="1;reboot")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is not a number" in out


@pytest.mark.parametrize("mode,code", [("done", 0), ("fail", 3)])
def test_exit_code_passes_through(rendered, mode, code):
    proc = start(rendered, "train/train_g0.sbatch", mode, SLURM_JOB_ID="5")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    assert read(rendered, "scontrol") == ""


def test_array_script_needs_task_id(rendered):
    proc = start(rendered, "partitions/partitions.sbatch", "done")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "job array script" in out
    proc = start(rendered, "partitions/partitions.sbatch", "done", SLURM_ARRAY_TASK_ID="3")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert read(rendered, "args").split()[-2:] == ["--tile", "3"]


@pytest.mark.parametrize("sig,says", [
    (signal.SIGTERM, ("stopped by SIGTERM (scancel or preemption): checkpoint saved, not requeueing; "
                      "`hpcffn submit --resume` continues it")),
    (signal.SIGUSR1, "checkpoint saved, work remains: requeueing 77"),
])
def test_the_log_tells_one_story_for_scancel_and_for_the_time_limit(rendered, sig, says):
    proc = start(rendered, "train/train_g0.sbatch", "checkpoint", SLURM_JOB_ID="77")
    wait_for(rendered / "ready", proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert says in out and out.count("requeueing") == 1, out
    assert "SLURM job 77" in out.splitlines()[0]


def test_a_local_run_names_the_id_status_shows(rendered):
    proc = start(rendered, "train/train_g0.sbatch", "done", HPCFFN_LOCAL="1", HPCFFN_LOCAL_ID="L5",
                 SLURM_JOB_ID="900005")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "local run L5" in out.splitlines()[0] and "900005" not in out, out


def test_tensorflow_log_knob_in_the_tensorflow_stages_only(rendered):
    jobs = rendered / "work" / "jobs"
    knob = 'export HPCFFN_TF_LOGS="${HPCFFN_TF_LOGS:-0}"'
    assert knob in (jobs / "train" / "train_g0.sbatch").read_text()
    assert knob in (jobs / "infer" / "infer_g0.sbatch").read_text()
    assert knob not in (jobs / "partitions" / "partitions.sbatch").read_text()
