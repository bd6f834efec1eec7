"""Per-job unit indexes, so an array task reads only its own unit, never the whole plan.

At 512,000 tiles plan.json is over 200 MB: every task loading it would spend seconds and
gigabytes before working. `hpcffn plan` therefore also writes, beside plan.json,

- units/plan.head.json: the plan without its per-tile lists (no tiles, groups without their
  tile names, jobs without units): the experiment-level facts every stage needs;
- units/<job>.units: one line per array task of the job, all padded to the same width, so
  task i's line starts at byte i x width: a seek and one read, whatever the tile count.
  A tile job's line is the tile's record (TilePlan JSON); a volume job's line is {"name": V}.

`load_task_plan` joins the two into a Plan holding just that task's tile (and every volume
and group, which are few), what partitions and infer read from.
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring_ascii as _quote  # json.dumps's quoting
from pathlib import Path

from hpcffn.core.atomic import atomic_write_text
from hpcffn.core.bundles import Runs, first_and_count, is_bundle, members
from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import Layout
from hpcffn.core.plan_model import JobPlan, Plan, TilePlan, load_plan
from hpcffn.core.stage_table import STAGE


def head_of(plan: Plan) -> Plan:
    """The plan without what grows with the tile count."""
    groups = [g.model_copy(update={"tiles": []}) for g in plan.groups]
    jobs = [j.model_copy(update={"units": []}) for j in plan.jobs]
    return plan.model_copy(update={"tiles": [], "groups": groups, "jobs": jobs})


def unit_lines(units: list[str], records: dict[str, str], members: dict[str, list[str]] | None = None) -> str:
    """The fixed-width lines of a job's unit index (`records`: tile name -> its JSON; others by name).

    `members`: a bundle unit (core/bundles.py) -> its tiles; its line is {"name": B, "tiles": [records]}."""
    members = members or {}
    lines = [records.get(u) or ('{"name":' + _quote(u) + ',"tiles":[' + ",".join(records[t] for t in members[u]) + "]}"
                                if u in members else '{"name": ' + _quote(u) + "}")  # = json.dumps({"name": u})
             for u in units]
    width = max(map(len, lines), default=0)
    return "".join([x.ljust(width) + "\n" for x in lines])


# The record layout `tile_records` writes by hand; a TilePlan with other fields takes the generic way.
_TILE_FIELDS = ("name", "volume", "index", "box", "infer_box", "group")
_TILE_RECORD = ('{"name":%s,"volume":%s,"index":[%d,%d,%d],"box":{"start":[%d,%d,%d],"size":[%d,%d,%d]},'
                '"infer_box":{"start":[%d,%d,%d],"size":[%d,%d,%d]},"group":%s}')


def tile_records(tiles: list[TilePlan]) -> dict[str, str]:
    """tile name -> its unit line: the compact, ASCII JSON of its TilePlan.

    Formatted directly (the same text as json.dumps of the dumped model, several times faster:
    100,000 tiles); the string quoting is json's own.
    """
    if tuple(TilePlan.model_fields) != _TILE_FIELDS:
        from pydantic import TypeAdapter

        dicts = TypeAdapter(list[TilePlan]).dump_python(tiles, mode="json")
        return {d["name"]: json.dumps(d, separators=(",", ":")) for d in dicts}
    out = {}
    for t in tiles:
        b, g = t.box, t.infer_box
        out[t.name] = _TILE_RECORD % (_quote(t.name), _quote(t.volume), *t.index, *b.start, *b.size, *g.start, *g.size,
                                      "null" if t.group is None else _quote(t.group))
    return out


def write_unit_indexes(plan: Plan, fingerprints: dict[str, list[str]] | None = None, into: Path | None = None,
                       records: dict[str, str] | None = None) -> None:
    """units/plan.head.json, units/<job>.units of every array job and units/<job>.fp of every job
    (`fingerprints`: job -> one per task) into `into` (default units/), temp file + rename each."""
    lay = plan.layout
    folder = into or lay.units_dir
    atomic_write_text(folder / lay.plan_head.name, head_of(plan).model_dump_json(indent=1))
    records = records if records is not None else tile_records(plan.tiles)  # every tile formatted once
    made: list[tuple[list[str], str]] = []  # partitions, joins and relabel all list every tile
    runs = Runs(plan.tiles) if plan.ffn.inference.tiles_per_task > 1 else None  # tiles of bundles, one pass
    for job in plan.jobs:
        if job.array:
            text = next((text for units, text in made if units == job.units), None)
            if text is None:
                members = task_tiles(plan, job, runs)
                text = unit_lines(job.units, records, members)
                made.append((job.units, text))
            atomic_write_text(folder / lay.unit_index(job.name).name, text)
        if fingerprints is not None:
            atomic_write_text(folder / lay.unit_fingerprints(job.name).name, "".join(f + "\n" for f in fingerprints[job.name]))


FP_LINE = 33  # 32 hex digits and a newline


def read_fingerprint(workdir: str | Path, job: str, index: int) -> str | None:
    """Fingerprint of task `index` of `job` (one seek and one read), None where none was written."""
    try:
        with open(Layout(workdir).unit_fingerprints(job), "rb") as f:
            f.seek(index * FP_LINE)
            line = f.read(FP_LINE)
    except OSError:
        return None
    return line[:-1].decode() if len(line) == FP_LINE else None


def read_fingerprints(workdir: str | Path, job: str) -> list[str] | None:
    """Every task's fingerprint of `job`, None where none were written (a plan of an older hpcffn)."""
    try:
        return Layout(workdir).unit_fingerprints(job).read_text().split()
    except OSError:
        return None


# Tasks loaded by `load_task_plan` in this process: (workdir, stage, unit) -> (job, index), so
# the stage's marker can name the fingerprint of the very task it ran. A task of several tiles
# registers each of its tiles too: their markers certify the task's meaning, found by a dict hit.
_TASKS: dict[tuple[str, str, str], tuple[str, int]] = {}


def _register(workdir: str, stage: str, job: str, index: int, names: list[str]) -> None:
    for name in names:
        _TASKS[(workdir, stage, name)] = (job, index)


def task_fingerprint(plan: Plan, stage: str, unit: str) -> str | None:
    """The fingerprint `hpcffn plan` wrote for `stage` unit `unit` (None: the plan has none).

    A task loaded by `load_task_plan` is a dict hit; a whole plan (a stage run by name, status,
    submit) is searched in its jobs' units."""
    where = _TASKS.get((plan.workdir, stage, unit))
    if where is None:
        where = next(((j.name, j.units.index(unit)) for j in plan.jobs if j.stage == stage and unit in j.units), None)
    if where is None:  # a tile of a task of several tiles: its marker certifies that task's meaning
        where = _bundle_holding(plan, stage, unit)
    return read_fingerprint(plan.workdir, *where) if where is not None else None


def _bundle_holding(plan: Plan, stage: str, tile: str) -> tuple[str, int] | None:
    """(job, index) of the `stage` task of several tiles that holds `tile`, in a whole plan: one
    pass over the tiles (bundles.Runs) and one over the units, not `members` per unit."""
    runs = Runs(plan.tiles)
    return next(((j.name, i) for j in plan.jobs if j.stage == stage for i, u in enumerate(j.units)
                 if is_bundle(u) and runs.holds(u, tile)), None)


_PLAN_ID = re.compile(rb'"plan_id": "([0-9a-f]*)"')


def check_plan_id(plan_path: Path, head: Plan) -> None:
    """Refuse to run when units/ and plan.json come from two `hpcffn plan` runs (one interrupted).

    plan_id is among plan.json's first fields: reading its first KB is enough.
    """
    try:
        with open(plan_path, "rb") as f:
            m = _PLAN_ID.search(f.read(1024))
    except OSError:
        return
    if m and head.plan_id and m.group(1).decode() != head.plan_id:
        raise HpcffnError(f"{plan_path} (plan {m.group(1).decode()}) and {Layout(plan_path.parent).plan_head} (plan "
                          f"{head.plan_id}) come from different `hpcffn plan` runs (one was interrupted): run "
                          "`hpcffn plan` again before running tasks")


def read_unit(plan_path: str | Path, job: str, index: int) -> dict:
    """The record of task `index` of `job`: one seek and one read of units/<job>.units."""
    lay = Layout(_workdir(plan_path))
    path = lay.unit_index(job)
    try:
        with open(path, "rb") as f:
            width = len(f.readline())
            f.seek(index * width)
            line = f.read(width) if index >= 0 else b""
    except OSError as exc:
        raise HpcffnError(f"cannot read {path} ({exc.strerror}); re-run `hpcffn plan` to write the unit indexes") from None
    if width == 0 or len(line) != width or not line.endswith(b"\n"):
        count = path.stat().st_size // width if width else 0
        raise HpcffnError(f"task index {index} is out of range: job {job} has {count} tasks in {path} "
                          f"(0..{count - 1}); re-run `hpcffn plan` if the spec changed")
    try:
        return json.loads(line)
    except ValueError:
        raise HpcffnError(f"{path}: line {index + 1} is not a unit record; re-run `hpcffn plan`") from None


def load_task_plan(plan_path: str | Path, job: str, index: int) -> tuple[Plan, str]:
    """(plan holding just this task's tile, unit name) for task `index` of array job `job`.

    Falls back to the whole plan.json where no index was written (a plan made before them).
    """
    lay = Layout(_workdir(plan_path))
    if not lay.plan_head.is_file() or not lay.unit_index(job).is_file():
        plan = load_plan(plan_path)
        unit = str(plan.task_unit(job, index))
        stage = next((j.stage for j in plan.jobs if j.name == job), "")
        held = [t.name for t in members(plan.tiles, unit)] if is_bundle(unit) else []
        _register(plan.workdir, stage, job, index, [unit, *held])
        return plan, unit
    record = read_unit(plan_path, job, index)
    head = load_plan(lay.plan_head)
    check_plan_id(lay.plan, head)
    stage = next((j.stage for j in head.jobs if j.name == job), "")
    _register(head.workdir, stage, job, index, [record["name"]])
    if set(record) == {"name"}:
        return head, record["name"]
    if set(record) == {"name", "tiles"}:  # an infer task of several tiles (core/bundles.py)
        tiles = [TilePlan.model_validate(t) for t in record["tiles"]]
        _register(head.workdir, stage, job, index, [t.name for t in tiles])
        return head.model_copy(update={"tiles": tiles}), record["name"]
    tile = TilePlan.model_validate(record)
    return head.model_copy(update={"tiles": [tile]}), tile.name


def task_tiles(plan: Plan, job: JobPlan, runs: Runs | None = None) -> dict[str, list[str]]:
    """An infer job's bundle units (tiles_per_task > 1) -> their tiles' names (core/bundles.py);
    {} for a job of another stage (only inference passes bundle tiles).

    `runs`: `Runs(plan.tiles)`, made once for several jobs."""
    out: dict[str, list[str]] = {}
    if not STAGE[job.stage].inference_pass:
        return out
    for unit in job.units:
        if is_bundle(unit):
            runs = runs or Runs(plan.tiles)
            found = runs.members(unit)
            if len(found) != first_and_count(unit)[1]:
                raise HpcffnError(f"task {unit} of job {job.name} does not match the plan's tiles; re-run `hpcffn plan`")
            out[unit] = [t.name for t in found]
    return out


def infer_task_tiles(plan: Plan, job: JobPlan) -> dict[str, list[str]]:
    """`task_tiles` of a plan loaded with or without its tiles (status reads plan.json without
    them): from the plan's tiles, else from the job's unit index. {} for one tile per task."""
    if not STAGE[job.stage].inference_pass or not any(is_bundle(u) for u in job.units):
        return {}
    if plan.tiles:
        return task_tiles(plan, job)
    out = {}
    try:
        with open(plan.layout.unit_index(job.name), encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if "tiles" in record:
                    out[record["name"]] = [t["name"] for t in record["tiles"]]
    except (OSError, ValueError):
        raise HpcffnError(f"cannot read the tasks of {job.name} from {plan.layout.unit_index(job.name)}; "
                          "re-run `hpcffn plan`") from None
    return out


def _workdir(plan_path: str | Path) -> Path:
    p = Path(plan_path)
    return p if p.is_dir() else p.parent
