"""`hpcffn status`: one row per job (stage x group) with SLURM states, task counts and outputs.

Combines state.json (which ids were submitted), SLURM (squeue, then sacct, then scontrol:
see slurm.Slurm.query), the success markers the stages write and the expected output files, so
the table stays right when accounting is missing or SLURM has forgotten old jobs. A SLURM
that does not answer degrades the table to markers and outputs with a warning, never a crash.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import infer_state_path
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import STAGE
from hpcffn.core.units import infer_task_tiles
from hpcffn.jobs import slurm
from hpcffn.jobs.listing import Listing, path_pattern
from hpcffn.jobs.observe import Category, JobTasks, observe_jobs, output_of
from hpcffn.jobs.state import load_state

_LATEST = re.compile(r'^model_checkpoint_path:\s*"(?:.*/)?ckpt-(\d+)"', re.MULTILINE)


def checkpoint_step(train_dir: Path) -> int | None:
    """Training step of a train dir's latest checkpoint, read from TF's `checkpoint` index file.

    Training numbers its checkpoints by step (ckpt-<step>), so a login node can show progress
    without TensorFlow.
    """
    try:
        m = _LATEST.search((train_dir / "checkpoint").read_text(errors="replace"))
    except OSError:
        return None
    return int(m.group(1)) if m else None


def infer_progress(output: Path) -> tuple[int, int] | None:
    """(seeds done, seeds) of an unfinished infer task, from the progress file it saves.

    Inference saves `<output>.state` every few minutes (hpcffn/stages/infer.py); reading its
    attributes needs only h5py, so the login node can show how far a tile got.
    """
    import h5py

    path = infer_state_path(output)
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["next_seed"]), int(f["seeds"].shape[0])
    except (OSError, KeyError, ValueError):
        return None


@dataclass
class StatusRow:
    """One job (stage x group) of `hpcffn status`; `as_json` is its record in `--json`."""

    job: str
    stage: str
    group: str
    tasks: int
    counts: dict[Category, int]  # tasks per category
    states: dict[str, int]  # tasks per state label (`_label`)
    job_ids: list[str]
    outputs: int  # tasks whose output exists
    detail: list[dict]  # one JSON-ready dict per task (`_detail`); empty without detail
    tile_outputs: int | None = None  # several tiles per task (infer, reverse) only: tile outputs there
    tiles: int | None = None  # ... and tiles in all

    def as_json(self) -> dict:
        """The row as `--json` has it: the tile counts only where a task has several tiles
        (shallow: the detail's dicts are already JSON-ready, and there can be 100,000s)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.tiles is None:
            del out["tile_outputs"], out["tiles"]
        return out


@dataclass
class Report:
    rows: list[StatusRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    slurm_answered: bool = True
    # job -> what the table shows beyond the row's counts (requeues, training steps, part-way
    # tiles), for reports collected without the per-task detail.
    notes: dict[str, dict] = field(default_factory=dict)
    # job -> its tasks as observed (categories, SLURM records): what `next_step` decides on.
    columns: dict[str, JobTasks] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        """Nothing alive: every task is done, failed or not submitted (unknowable without SLURM)."""
        return self.slurm_answered and all(r.counts.get(Category.ALIVE, 0) == 0 for r in self.rows)

    @property
    def all_done(self) -> bool:
        return all(r.counts.get(Category.DONE, 0) == r.tasks for r in self.rows)

    def notes_of(self, row: StatusRow) -> dict:
        """What the table shows of a row beyond its counts: requeues, training steps, part-way tiles."""
        return self.notes.get(row.job) or _notes_of(row)

    def as_json(self, plan: Plan) -> dict:
        """`hpcffn status --json`."""
        return {"plan": str(plan.layout.plan), "rows": [r.as_json() for r in self.rows], "warnings": self.warnings,
                "finished": self.finished, "all_done": self.all_done}


# The label of a task without a SLURM record (or whose record no longer counts).
_NO_RECORD = {Category.NEVER: "NOT SUBMITTED", Category.DONE: "COMPLETED (marker)",
              Category.MISSING: "OUTPUT MISSING"}  # else "UNKNOWN (no marker)"


def _label(category: Category | None, info: slurm.TaskInfo | None) -> str:
    """A task's state in the table (a task with a record: from the record alone)."""
    if category in (Category.NEVER, Category.MISSING):
        return _NO_RECORD[category]
    if info is None:
        return _NO_RECORD.get(category, "UNKNOWN (no marker)")
    if info.state == "PENDING" and info.reason not in ("", "None"):
        return f"PENDING ({info.reason})"
    if info.cancelled_by_dependency:
        return f"CANCELLED ({info.reason})"
    return info.state


def _labels(tasks: JobTasks) -> list[str]:
    """Each task's state label, worked out once per SLURM record (one pending array record
    stands for thousands of tasks)."""
    keys = list(map(id, tasks.infos))
    records = dict(zip(keys, tasks.infos))
    label = {k: _label(None, info) for k, info in records.items() if info is not None}
    if id(None) not in records and Category.MISSING not in tasks.categories:  # every task has a record
        return list(map(label.__getitem__, keys))
    return [label[k] if info is not None and cat is not Category.MISSING else _label(cat, None)
            for k, info, cat in zip(keys, tasks.infos, tasks.categories)]


def collect(plan: Plan, detail: bool = True, scheduler: slurm.Slurm | None = None) -> Report:
    """Build the status report from `scheduler` (this machine's SLURM by default); SLURM errors
    become warnings.

    detail=False leaves each row's per-task `detail` empty (the table needs only counts and
    `notes`): at 100,000 tiles that is half a million dicts not made.
    """
    report = Report()
    state = load_state(plan.layout.state)
    scheduler = scheduler or slurm.Slurm()

    def query(ids):
        problems: list[str] = []
        try:
            found = scheduler.query(ids, problems=problems)
            report.warnings += [f"{p}; states come from what did answer (and markers)" for p in problems]
            return found
        except HpcffnError as exc:
            report.slurm_answered = False
            report.warnings.append(f"{exc}; states come from markers only")
            return {}

    columns = report.columns = observe_jobs(plan, state, query=query)
    listing = Listing()
    for job in plan.jobs:
        c = columns[job.name]
        states = _labels(c)
        output = path_pattern(output_of(plan, job.stage))
        bundled = infer_task_tiles(plan, job)
        exists = listing.each(output, c.units) if not bundled else []
        extra: dict[int, dict] = {}  # task position -> "step" (train) or "seeds" (infer)
        tile_counts = None
        if job.stage == "train":
            extra = {i: {"step": checkpoint_step(plan.layout.train_dir(u))} for i, u in enumerate(c.units)}
        elif bundled:  # tiles_per_task > 1: outputs and progress per tile, a task done when all its tiles are
            progress = path_pattern(lambda u, stage=job.stage: infer_state_path(plan.infer_output(stage, u)))
            exists, extra, tile_counts = _bundled_infer(plan, c.units, bundled, output, progress, listing)
        elif STAGE[job.stage].inference_pass:
            progress = path_pattern(lambda u, stage=job.stage: infer_state_path(plan.infer_output(stage, u)))
            # Listed first: most tiles have no progress file, and opening each would cost.
            started = listing.each(progress, c.units)
            extra = {i: {"seeds": infer_progress(Path(output(u))) if started[i] else None}
                     for i, u in enumerate(c.units) if not exists[i]}
        outs = [None if u in bundled else output(u) for u in c.units]  # a task of several tiles: see its tiles
        tasks = _detail(c, states, outs, exists, extra) if detail else []
        report.notes[job.name] = {
            "requeues": sum(i.restarts or 0 for i in c.infos if i is not None),  # SLURM's count, or the local runner's
            "steps": [e["step"] or 0 for e in extra.values() if "step" in e],
            "seeds": [e["seeds"] for e in extra.values() if e.get("seeds")],
        }
        report.rows.append(StatusRow(
            job=job.name, stage=job.stage, group=job.group or "-", tasks=len(c.tasks),
            counts=dict(Counter(c.categories)), states=dict(Counter(states)),
            job_ids=sorted({s.job_id for s in c.subs if s is not None}), outputs=sum(exists), detail=tasks,
            **({"tile_outputs": tile_counts[0], "tiles": tile_counts[1]} if tile_counts is not None else {}),
        ))
    return report


def _bundled_infer(plan: Plan, units: list[str], bundled: dict[str, list[str]], output, progress,
                   listing: Listing) -> tuple[list[bool], dict[int, dict], tuple[int, int]]:
    """An infer array of several tiles per task: (each task's outputs all there, "seeds" of its
    part-way tiles summed, (tile outputs, tiles))."""
    tiles_of = [bundled.get(u, [u]) for u in units]
    flat = [t for ts in tiles_of for t in ts]
    there = dict(zip(flat, listing.each(output, flat)))
    started = dict(zip(flat, listing.each(progress, flat)))
    exists = [all(there[t] for t in ts) for ts in tiles_of]
    extra: dict[int, dict] = {}
    for i, ts in enumerate(tiles_of):
        if exists[i]:
            continue
        parts = [p for t in ts if not there[t] and started[t] and (p := infer_progress(Path(output(t))))]
        extra[i] = {"tiles": ts, "seeds": (sum(d for d, _ in parts), sum(n for _, n in parts)) if parts else None}
    return exists, extra, (sum(there.values()), len(flat))


def _detail(c: JobTasks, states: list[str], outs: list, exists: list[bool], extra: dict[int, dict]) -> list[dict]:
    """One dict per task (`hpcffn status --json`, --watch's advice, the report)."""
    tasks = []
    for i, (task, unit, sub, info, cat) in enumerate(zip(c.tasks, c.units, c.subs, c.infos, c.categories)):
        tasks.append({
            "task": task, "unit": unit, "id": sub.task_id(task) if sub else None, "category": cat,
            "state": states[i], "exit_code": info.exit_code if info else None, "restarts": info.restarts if info else 0,
            "source": info.source if info else ("marker" if cat is Category.DONE else ""),
            "output": outs[i], "output_exists": exists[i], **extra.get(i, {}),
        })
    return tasks


def _notes_of(row: StatusRow) -> dict:
    """A row's `notes` from its per-task detail (a report made elsewhere)."""
    detail = row.detail
    return {"requeues": sum(t["restarts"] or 0 for t in detail),
            "steps": [t["step"] or 0 for t in detail if "step" in t],
            "seeds": [t["seeds"] for t in detail if t.get("seeds")]}


def next_step(plan: Plan, report: Report) -> str:
    """What to run after --watch ends: resume what failed, submit what never ran, or read the report.

    Decided on the observed tasks (`report.columns`): their categories and SLURM records.
    """
    bad = (Category.FAILED, Category.LOST, Category.MISSING)
    tasks = [(c.job.stage, unit, info) for c in report.columns.values()
             for unit, info, cat in zip(c.units, c.infos, c.categories) if cat in bad]
    # Tasks cancelled only because something they depend on failed are not causes, unless
    # nothing else failed.
    causes = [t for t in tasks if t[2] is None or not t[2].cancelled_by_dependency] or tasks
    local = any(s is not None and s.local for c in report.columns.values() for s in c.subs)
    where = plan.workdir
    if causes:
        stage, unit, _ = causes[0]
        followers = len(tasks) - len(causes)
        more = f" ({followers} more cancelled because they depend on them)" if followers else ""
        rerun = f"hpcffn run {where} --resume" if local else f"hpcffn submit {where} --resume"
        return (f"next: {len(causes)} task(s) failed or were cancelled{more}; read `hpcffn logs {stage} "
                f"{unit} --plan-dir {where}`, fix the cause, then `{rerun}`")
    if report.all_done:
        return f"next: every job is done; `hpcffn report {where}` writes the page with the results"
    return f"next: some jobs were never submitted; `hpcffn submit {where}` submits them"
