"""Success markers: each stage unit writes workdir/markers/<stage>/<unit>.done when done.

`status` reads them to tell "the output exists" apart from what SLURM remembers.
"""

from __future__ import annotations

import json
import os
import socket
import time

from hpcffn.core.atomic import atomic_write_text
from hpcffn.core.plan_model import Plan


def mark_done(plan: Plan, stage: str, unit: str, **info) -> None:
    record = {
        "stage": stage,
        "unit": unit,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **info,
    }
    atomic_write_text(plan.layout.marker(stage, unit), json.dumps(record, indent=1) + "\n")


def is_done(plan: Plan, stage: str, unit: str) -> bool:
    return plan.layout.marker(stage, unit).is_file()
