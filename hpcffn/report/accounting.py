"""GPU-hours and run time per stage, from SLURM accounting (sacct) of the submitted job ids.

Local runs (`L<n>` ids) and clusters without slurmdbd have no accounting: the report says so
instead of guessing.
"""

from __future__ import annotations

import re
import shutil
import subprocess

from hpcffn.core.plan_model import Plan
from hpcffn.jobs.state import load_state

_GPUS = re.compile(r"gres/gpu(?::[^=,]+)?=(\d+)")


def gpus_of(tres: str) -> int:
    """GPUs in an AllocTRES string ("cpu=4,gres/gpu=2,mem=16G" -> 2; typed entries counted once)."""
    plain = re.search(r"gres/gpu=(\d+)", tres)
    if plain:
        return int(plain.group(1))
    return sum(int(n) for n in _GPUS.findall(tres))


def parse_usage(text: str) -> dict[str, tuple[float, int]]:
    """`sacct -n -P -X -o JobID,ElapsedRaw,AllocTRES` -> job id -> (elapsed seconds, GPUs)."""
    out = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[1].strip().isdigit():
            continue
        out[parts[0].strip()] = (float(parts[1]), gpus_of(parts[2]))
    return out


def stage_usage(plan: Plan, run=subprocess.run) -> dict | None:
    """stage -> {"hours": wall hours, "gpu_hours": GPU-hours, "runs": n} over every SLURM run;
    None when nothing was submitted to SLURM or sacct does not answer."""
    state = load_state(plan.layout.state)
    stage_of = {j.name: j.stage for j in plan.jobs}
    ids = {s.job_id: stage_of.get(s.job) for s in state.submissions if not s.local and s.job_id.isdigit()}
    sacct = shutil.which("sacct")
    if not ids or sacct is None:
        return None
    try:
        proc = run([sacct, "-n", "-P", "-X", "-j", ",".join(sorted(ids)), "-o", "JobID,ElapsedRaw,AllocTRES"],
                   capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    usage: dict[str, dict] = {}
    for jid, (seconds, gpus) in parse_usage(proc.stdout).items():
        stage = ids.get(re.split(r"[_.+]", jid, maxsplit=1)[0])
        if stage is None:
            continue
        row = usage.setdefault(stage, {"hours": 0.0, "gpu_hours": 0.0, "runs": 0})
        row["hours"] += seconds / 3600
        row["gpu_hours"] += seconds * gpus / 3600
        row["runs"] += 1
    return usage or None
