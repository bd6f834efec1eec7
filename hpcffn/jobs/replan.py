"""A re-plan that changes what units mean (their fingerprints: plan/fingerprints.py).

Such a re-plan is refused while the changed units' work is in progress (alive in SLURM per
state.json, or a local `hpcffn run` holding the workdir); otherwise, just before the new plan
is switched in, the changed units stop counting as done: their markers are removed, the
submissions that ran them are marked stale in state.json, and a changed group's train dir is
moved aside (training would continue from its old checkpoints). Everything downstream of a
change changes its fingerprint too, so it is redone as well.
"""

from __future__ import annotations

import time
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan, load_plan
from hpcffn.core.units import read_fingerprints
from hpcffn.jobs.listing import Listing, path_pattern
from hpcffn.jobs.observe import Category, observe
from hpcffn.jobs.state import load_state, locked, recorded, updating
from hpcffn.plan.render import previous_head

Changed = dict[str, set[str]]  # stage -> names of its units whose meaning changed


def changed_units(new: Plan, fingerprints: dict[str, list[str]]) -> Changed:
    """Units of the new plan whose fingerprint no unit of the same stage had in the plan in place.

    Read before the new plan is written. A plan without fingerprints (an older hpcffn's) has
    certified nothing: every unit counts as changed.
    """
    lay = new.layout
    if not lay.plan.is_file():
        return {}
    old: dict[str, list[str]] = {}  # job -> its fingerprints
    stage_of: dict[str, str] = {}
    for job in previous_head(lay).get("jobs") or []:
        if isinstance(job, dict) and isinstance(job.get("name"), str):
            old[job["name"]] = read_fingerprints(lay.root, job["name"]) or []
            stage_of[job["name"]] = str(job.get("stage"))
    known: dict[str, set[str]] = {}
    changed: Changed = {}
    for job in new.jobs:
        if old.get(job.name) == fingerprints[job.name]:
            continue  # the same job, task for task (a re-plan of the same spec: every job)
        if job.stage not in known:
            known[job.stage] = {fp for name, fps in old.items() if stage_of[name] == job.stage for fp in fps}
        seen = known[job.stage]
        units = [u for u, fp in zip(job.units, fingerprints[job.name]) if fp not in seen]
        if units:
            changed.setdefault(job.stage, set()).update(units)
    return changed


def _count(changed: Changed) -> str:
    return ", ".join(f"{len(units)} {stage}" for stage, units in changed.items())


def refuse_work_in_progress(new: Plan, changed: Changed, query=None) -> None:
    """A re-plan must not change units that are being worked on (a local run, or SLURM tasks alive)."""
    lay = new.layout
    if not changed or not lay.state.parent.is_dir():
        return
    try:
        with locked(lay.state):
            pass
    except HpcffnError:
        raise HpcffnError(f"a `hpcffn run` (or submit) is working in {lay.root} and this re-plan changes units it may "
                          f"run ({_count(changed)}): wait for it to finish or stop it (`hpcffn cancel {lay.root}`), "
                          "then plan again") from None
    if not recorded(lay.state):
        return
    try:
        old = load_plan(lay.plan, tiles=False)
        views = observe(old, load_state(lay.state), query)
    except HpcffnError as exc:
        raise HpcffnError(f"cannot tell whether jobs of {lay.root} are still queued ({exc}); re-plan with --force "
                          "if none are") from None
    busy = sorted({j.name for j in old.jobs for v in views[j.name]
                   if v.category is Category.ALIVE and v.unit in changed.get(j.stage, ())})
    if busy:
        raise HpcffnError(f"jobs {', '.join(busy)} are still pending or running and the new plan changes what their "
                          f"units mean ({_count(changed)} units: boxes, parameters or inputs); wait for them or run "
                          f"`hpcffn cancel {lay.root}`, then plan again (or --force)")


def invalidate(plan: Plan, changed: Changed) -> list[str]:
    """Make the changed units not done (markers, state.json, train dirs); what was moved aside."""
    lay = plan.layout
    moved: list[str] = []
    if not changed:
        return moved
    with locked(lay.state):  # no local run may start while units are being reset
        listing = Listing()
        for stage, units in changed.items():
            marker = path_pattern(lambda u, stage=stage: lay.marker(stage, u))
            for unit, there in zip(units, listing.each(marker, list(units))):
                if there:
                    Path(marker(unit)).unlink(missing_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for group in sorted(changed.get("train", ())):
            folder = lay.train_dir(group)
            if folder.is_dir() and any(folder.iterdir()):
                aside = folder.with_name(f"{folder.name}.replaced-{stamp}")
                folder.rename(aside)
                moved.append(str(aside))
        if recorded(lay.state):
            stage_of = {j.name: j.stage for j in plan.jobs}
            with updating(lay.state) as state:
                for sub in state.submissions:
                    units = changed.get(stage_of.get(sub.job, ""))
                    if not units:
                        continue
                    if sub.units:
                        stale = {int(k) for k, u in sub.units.items() if u in units}
                    else:  # recorded before units were: it may have run any of them
                        stale = set(sub.tasks if sub.tasks is not None else [0])
                    if stale - set(sub.stale):
                        sub.stale = sorted(stale | set(sub.stale))
    return moved
