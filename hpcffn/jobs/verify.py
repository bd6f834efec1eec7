"""`hpcffn verify WORKDIR`: are the stitched volumes whole?

A deleted or cut-off chunk of the stitched OME-Zarr store reads as background in other tools
(and in ours before this check), which silently changes every evaluation. `status` reads only
markers and SLURM, so it cannot see damage done after a task finished; this check reads every
chunk file's size and header (not its voxels), so it takes seconds even for large stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hpcffn.core.plan_model import Plan
from hpcffn.io import ome_zarr

SHOWN = 5  # damaged chunks named per volume


@dataclass
class VolumeCheck:
    volume: str
    store: str
    state: str  # "whole", "damaged", "not stitched", "stitch not finished"
    problems: list[str] = field(default_factory=list)


def verify_plan(plan: Plan) -> list[VolumeCheck]:
    """One check per planned volume with a stitched store (or a note why there is none)."""
    planned = {u for job in plan.jobs if job.stage in ("relabel", "pyramid") for u in job.units}
    out = []
    for vol in plan.volumes:
        store = plan.layout.stitched(vol.name)
        if not store.is_dir():
            out.append(VolumeCheck(vol.name, str(store), "not stitched"))
            continue
        units = [("relabel", t.name) for t in plan.tiles if t.volume == vol.name and t.name in planned]
        units += [("pyramid", u) for u in planned if u.startswith(f"{vol.name}_s")]
        finished = all(plan.layout.marker(stage, unit).is_file() for stage, unit in units)
        problems = ome_zarr.damaged_chunks(store)
        if not finished:
            # Chunks not written yet are expected; a cut-off one is damage even now.
            problems = [p for p in problems if not p.endswith(": missing")]
        state = "damaged" if problems else ("whole" if finished else "stitch not finished")
        out.append(VolumeCheck(vol.name, str(store), state, problems))
    return out


def describe(check: VolumeCheck) -> str:
    """One line per volume."""
    if not check.problems:
        return f"{check.volume}: {check.state} ({check.store})"
    shown = ", ".join(check.problems[:SHOWN]) + (f" and {len(check.problems) - SHOWN} more"
                                                 if len(check.problems) > SHOWN else "")
    return f"{check.volume}: {len(check.problems)} damaged chunks in {check.store}: {shown}"
