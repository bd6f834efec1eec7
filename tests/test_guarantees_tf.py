"""Guarantees that need TensorFlow: a signal during the TensorFlow import still checkpoints
and asks for a requeue; the stage flags of plan-mode infer override the plan."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

tf = pytest.importorskip("tensorflow")

from test_data_stages_plan import make_plan as make_data_plan
from test_model_train import ENV, _cli_train, data  # noqa: F401 - data is a fixture

from hpcffn.core.layout import EXIT_REQUEUE
from hpcffn.stages import convert

pytestmark = [pytest.mark.tf, pytest.mark.slow]

USR1_BIT = 1 << (signal.SIGUSR1 - 1)


def _catches_usr1(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & USR1_BIT)
    return False


def test_usr1_during_the_tensorflow_import_checkpoints_and_asks_for_a_requeue(data, tmp_path):  # noqa: F811
    train_dir = tmp_path / "t"
    proc = subprocess.Popen(_cli_train(data, train_dir, 1000), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not _catches_usr1(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        tf_loaded = "tensorflow" in Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not tf_loaded, "the handler must be in place before TensorFlow loads"
    assert proc.returncode == EXIT_REQUEUE, out
    assert "work remains (exit 75)" in out and tf.train.latest_checkpoint(str(train_dir))


def test_plan_mode_infer_uses_the_checkpoint_flag(tmp_path):
    plan, _, _ = make_data_plan(tmp_path)
    convert.run_from_plan(plan, "v", progress=False)
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "stage", "infer", "--plan", str(plan.layout.plan),
                           "--tile", "0", "--checkpoint", str(tmp_path / "nonexistent" / "ck"),
                           "--fov-size", "5,5,5", "--deltas", "1,1,1"],
                          capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"no checkpoint at {tmp_path / 'nonexistent' / 'ck'}" in proc.stderr


def test_disk_full_while_training_says_so_and_leaves_no_partial_checkpoint(data, tmp_path):  # noqa: F811
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, check=False).returncode:
        pytest.skip("needs a small tmpfs (mount as root) to fill the disk")
    cmd = _cli_train(data, mnt / "t", 5)
    cmd[cmd.index("--features") + 1] = "64"  # weights and optimizer slots of several MB: more than the disk
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300, check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "no space left" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not list((mnt / "t").glob("ckpt-*_temp"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path):
    from hpcffn.ffn import synthetic

    raw, _labels = synthetic.balls_volume((24, 24, 24), seed=1)
    synthetic.write_volume(tmp_path / "img.h5", raw, _labels)
    (tmp_path / "ck.index").write_bytes(b"not a checkpoint index" * 10)
    (tmp_path / "ck.data-00000-of-00001").write_bytes(b"\\0" * 100)
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "stage", "infer", "--image", f"{tmp_path}/img.h5:raw",
                           "--checkpoint", str(tmp_path / "ck"), "--output", str(tmp_path / "seg.h5"),
                           "--depth", "2", "--fov-size", "9,9,9", "--deltas", "2,2,2"],
                          capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "truncated or damaged" in proc.stderr
