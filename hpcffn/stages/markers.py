"""Success markers and unit locks: what a stage run from a plan does around its work.

Each stage unit writes workdir/markers/<stage>/<unit>.done when done; `status` reads them to
tell "the output exists" apart from what SLURM remembers. The marker holds the unit's
fingerprint (plan/fingerprints.py: its box, parameters and inputs), so it certifies the unit
it was made for and no other; a unit whose plan changed while it ran is not marked done.
While it works, it holds the unit's lock (`hold_unit`), so a resubmitted or resumed job never
writes beside a live one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from hpcffn.core.atomic import atomic_write_text, remove_stale_temporaries
from hpcffn.core.errors import HpcffnError
from hpcffn.core.locks import exclusive
from hpcffn.core.plan_model import Plan
from hpcffn.core.units import task_fingerprint

# (workdir, stage, unit) -> the unit's fingerprint when this process took its lock.
_STARTED: dict[tuple[str, str, str], str | None] = {}


def mark_done(plan: Plan, stage: str, unit: str, **info) -> None:
    fingerprint = task_fingerprint(plan, stage, unit)
    started = _STARTED.pop((plan.workdir, stage, unit), fingerprint)
    if started != fingerprint:
        raise HpcffnError(f"the plan of {plan.layout.root} changed while {stage} {unit} ran (`hpcffn plan`): its "
                          "result was made for the old plan and is not marked done; run it again")
    record = {
        "stage": stage,
        "unit": unit,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "fingerprint": fingerprint,
        **info,
    }
    atomic_write_text(plan.layout.marker(stage, unit), json.dumps(record, indent=1) + "\n")


def is_done(plan: Plan, stage: str, unit: str) -> bool:
    """The unit's marker exists and certifies the unit as the plan now means it."""
    return certifies(plan.layout.marker(stage, unit), task_fingerprint(plan, stage, unit))


def certifies(marker: Path, fingerprint: str | None) -> bool:
    """Whether `marker` exists and was written for `fingerprint` (any marker, where the plan has none)."""
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return fingerprint is None or (isinstance(record, dict) and record.get("fingerprint") == fingerprint)


@contextmanager
def hold_unit(plan: Plan, stage: str, unit: str, outputs: tuple = (), extra_prefixes: tuple[str, ...] = ()):
    """Be the one writer of `stage` unit `unit`; then clear temporaries a killed run left at `outputs`."""
    fix = ("wait for it to end, or cancel that job (`hpcffn cancel`, `scancel`, or end the process) and run this again")
    with exclusive(plan.layout.unit_lock(stage, unit), f"{stage} {unit} of {plan.layout.root}", fix):
        _STARTED[(plan.workdir, stage, unit)] = task_fingerprint(plan, stage, unit)
        for out in outputs:
            remove_stale_temporaries(Path(out), extra_prefixes)
        yield
