"""Stage logs without TensorFlow's C++ start-up chatter (hpcffn/core/native_logs.py), signal
names in logs, and local runs named by the id `hpcffn status` shows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

# What a TensorFlow import prints on a CPU node (TF 2.21), plus lines that must stay.
CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    ("I0000 00:00:1795976175.418348   13759 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
     "GPU will not be used."),
    "W0000 00:00:1795976175.5   13759 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
    ("To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
     "appropriate compiler flags."),
]
KEPT = ["E0000 00:00:1795976175.9   13759 something.cc:1] a real error", "plain text from C"]


def _run_with_fake_tf(tmp_path, env_extra: dict) -> subprocess.CompletedProcess:
    """Import a stand-in `tensorflow` that writes to fd 2 as the C++ runtime does."""
    pkg = tmp_path / "fake" / "tensorflow"
    pkg.mkdir(parents=True)
    lines = "".join(line + "\n" for line in CHATTER + KEPT)
    (pkg / "__init__.py").write_text(f"import os\nos.write(2, {lines.encode()!r})\nVALUE = 42\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "fake")!r})
        from hpcffn.core.native_logs import quiet_tensorflow
        quiet_tensorflow()
        import tensorflow
        print("value", tensorflow.VALUE)
        import os; print("level", os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HPCFFN_TF_LOGS", "TF_CPP_MIN_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**env, **env_extra}, check=False)


def test_tensorflow_start_up_chatter_is_dropped_and_errors_kept(tmp_path):
    proc = _run_with_fake_tf(tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["value", "42", "level", "3"]
    assert proc.stderr.splitlines() == KEPT


def test_the_knob_brings_the_chatter_back(tmp_path):
    proc = _run_with_fake_tf(tmp_path, {"HPCFFN_TF_LOGS": "1"})
    assert proc.stderr.splitlines() == CHATTER + KEPT
    assert proc.stdout.split()[-1] == "None"


def test_signals_are_named():
    pytest.importorskip("numpy")
    from hpcffn.ffn.training import signal_name

    assert signal_name(signal.SIGUSR1) == "SIGUSR1" and signal_name(15) == "SIGTERM"
    assert signal_name(None) == "signal None"


def test_local_task_environment_carries_the_status_id(mini_plan):
    from hpcffn.jobs.local_runner import task_env

    env = task_env(mini_plan, mini_plan.jobs[0], {}, "900005", 0, 0)
    assert env["HPCFFN_LOCAL_ID"] == "L5" and env["SLURM_JOB_ID"] == "900005"
