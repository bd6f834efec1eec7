"""What hardware TensorFlow sees, and a stop when SLURM gave GPUs that TensorFlow cannot use.

The classic cluster failure: the job gets a V100, but the container ran without `--nv` or the
image's TensorFlow does not match the node's CUDA driver, so TensorFlow quietly trains on the
CPU, 50-100x slower, for days. Train and infer log one line about their environment at start
and refuse to run on the CPU when SLURM assigned GPUs (HPCFFN_ALLOW_CPU=1 lets them).
"""

from __future__ import annotations

import os
import platform

from hpcffn.core.errors import HpcffnError

# Variables SLURM (or the user) sets when a job has GPUs.
_GPU_VARS = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")


def assigned_gpus() -> str | None:
    """The GPU list SLURM gave this job ("0,1"), or None."""
    for name in _GPU_VARS:
        value = os.environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles"):
            return f"{name}={value}"
    return None


def gpu_report() -> tuple[list[str], str | None, str | None]:
    """(GPUs TensorFlow sees, GPUs SLURM gave, the problem when it gave some and TensorFlow sees none)."""
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name)
        except (ValueError, RuntimeError):
            names.append(gpu.name)
    given = assigned_gpus()
    problem = None
    if given and not names:
        problem = (f"this job was given GPUs ({given}) but TensorFlow {tf.__version__} sees none, so it would run "
                   "on the CPU: run the container with --nv (container.nv) and an image whose TensorFlow matches "
                   "the node's CUDA driver")
    return names, given, problem


def use_onednn() -> None:
    """Use TensorFlow's oneDNN CPU kernels unless TF_ENABLE_ONEDNN_OPTS says otherwise.

    TensorFlow turns them on by default only on some CPUs (not on the AMD EPYC we measured on);
    FFN's conv3d inference ran 1.3-2.4x faster with them in our measurements, with the same logits as FFN's
    own TF1 graph under the same setting. Call it before TensorFlow is imported (no effect after).
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def environment_line(stage: str) -> str:
    """One log line: versions and the devices TensorFlow sees; raises when assigned GPUs are unseen."""
    import tensorflow as tf

    from hpcffn import __version__

    names, _, problem = gpu_report()
    if problem and os.environ.get("HPCFFN_ALLOW_CPU") != "1":
        raise HpcffnError(f"{stage}: {problem}; set HPCFFN_ALLOW_CPU=1 to run on the CPU anyway")
    devices = ", ".join(names) if names else f"CPU only ({os.cpu_count()} cores)"
    if not names:
        devices += f", oneDNN {'on' if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1' else 'TensorFlow default'}"
    return (f"hpcffn {stage}: hpcffn {__version__}, Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, devices: {devices}")
