"""Stage resources a cluster would refuse or that cannot work, found when planning.

A train `time` above what the profile's partitions allow is refused by sbatch only at submit
(after a queue wait for the jobs before it), and `gpus: 0` for train renders a job that trains
on CPUs for weeks. Both are spec mistakes, so `validate` and `plan` name them. An infer memory
request below what a task of `tiles_per_task` tiles needs is only an estimate, so `plan` warns.
"""

from __future__ import annotations

import re
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.stage_table import STAGE
from hpcffn.plan.cost import CANVAS_BYTES_PER_VOXEL, PEAK_BYTES_PER_VOXEL
from hpcffn.plan.spec import StageResources

# Seconds before the time limit that SLURM sends train/infer USR1 when no profile says (planner).
DEFAULT_SIGNAL_GRACE = 300
_PARTS = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_MEMORY = re.compile(r"(\d+)([KMGT]?)")


def time_seconds(text: str) -> float:
    """Seconds of a SLURM time ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS");
    inf for UNLIMITED/INFINITE."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return float("inf")
    m = _PARTS.fullmatch(text)
    if m is None:
        raise HpcffnError(f"time {text!r} is not a SLURM time (e.g. 12:00:00 or 2-00:00:00)")
    days, a, b, c = (int(v) if v is not None else None for v in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # MM[:SS]


def memory_bytes(text: str) -> int:
    """Bytes of a SLURM --mem ("64G", "8000M", "8000": megabytes without a unit; binary units)."""
    m = _MEMORY.fullmatch(text.strip().upper())
    if m is None:
        raise HpcffnError(f"memory {text!r} is not a SLURM memory size (e.g. 64G or 8000M)")
    return int(m.group(1)) * 1024 ** "KMGT".index(m.group(2) or "M") * 1024


def warn_infer_memory(needed: int, tiles: int, res: StageResources, warnings: list[str]) -> None:
    """Warn when a task of several tiles (cost.task_memory: `needed` bytes for `tiles` tiles) needs
    more than the infer stage's --mem: SLURM would kill it for memory once its canvases fill.
    One tile per task keeps the plan's warnings as they were."""
    limit = memory_bytes(res.memory) if res.memory else 0  # unset, or --mem=0 (the whole node): no limit known
    if tiles <= 1 or not limit or needed <= limit:
        return
    warnings.append(f"ffn.inference.tiles_per_task: a task holds the canvases of its {tiles} tiles at once, about "
                    f"{needed / 2**30:.1f} GiB at its peak ({CANVAS_BYTES_PER_VOXEL} bytes per voxel of each tile's "
                    f"infer box, {PEAK_BYTES_PER_VOXEL} more for one tile), above cluster.infer.memory {res.memory}: "
                    "raise it or lower tiles_per_task, or SLURM kills the tasks for memory")


def check_resources(resources: dict[str, StageResources], stages: list[str], max_time: str | None, profile: str,
                    spec_path: Path) -> None:
    """Refuse times above the profile's `max_time`, train/infer times within their checkpoint
    signal's grace (USR1 would come before the work) and a GPU-less train."""
    for stage in stages:
        res = resources[stage]
        if max_time and res.time and time_seconds(res.time) > time_seconds(max_time):
            raise HpcffnError(
                f"{spec_path}: field cluster.{stage}.time: {res.time} is above the limit of profile {profile} "
                f"(max_time {max_time}), so SLURM would refuse the job; give at most {max_time} "
                "(train and infer continue across requeues)"
            )
        grace = res.signal_grace or DEFAULT_SIGNAL_GRACE
        if STAGE[stage].requeues and res.time and time_seconds(res.time) <= grace:
            raise HpcffnError(
                f"{spec_path}: field cluster.{stage}.time: {res.time} ({time_seconds(res.time):g} s) is not "
                f"longer than the checkpoint signal grace of {grace} s (--signal=B:USR1@{grace}, "
                f"cluster.{stage}.signal_grace): SLURM would ask for the checkpoint before the job starts; give a "
                f"longer time or a signal_grace well below it (at least 10)"
            )
    if "train" in stages and resources["train"].gpus == 0:
        raise HpcffnError(
            f"{spec_path}: field cluster.train.gpus: 0 trains FFN on CPUs, which takes weeks; give 1 or more "
            "(or leave gpus out with a profile without GPUs, such as local, to try a pipeline on CPUs)"
        )
