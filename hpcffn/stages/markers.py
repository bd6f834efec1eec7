"""Success markers and unit locks: what a stage run from a plan does around its work.

Each stage unit writes workdir/markers/<stage>/<unit>.done when done; `status` reads them to
tell "the output exists" apart from what SLURM remembers. While it works, it holds the
unit's lock (`hold_unit`), so a resubmitted or resumed job never writes beside a live one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from hpcffn.core.atomic import atomic_write_text, remove_stale_temporaries
from hpcffn.core.locks import exclusive
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


@contextmanager
def hold_unit(plan: Plan, stage: str, unit: str, outputs: tuple = (), extra_prefixes: tuple[str, ...] = ()):
    """Be the one writer of `stage` unit `unit`; then clear temporaries a killed run left at `outputs`."""
    fix = ("wait for it to end, or cancel that job (`hpcffn cancel`, `scancel`, or end the process) and run this again")
    with exclusive(plan.layout.unit_lock(stage, unit), f"{stage} {unit} of {plan.layout.root}", fix):
        for out in outputs:
            remove_stale_temporaries(Path(out), extra_prefixes)
        yield
