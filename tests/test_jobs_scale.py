"""Job machinery at scale, without SLURM: per-unit indexes, folder listings, array pieces,
plan-time limit warnings. (Speed itself is measured in benchmarks/bench_jobs.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fake_slurm import FakeSlurm
from plan_helpers import spec_dict, write_h5, write_spec

from hpcffn.commands.options import task_plan
from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import load_plan
from hpcffn.core.units import load_task_plan, read_unit
from hpcffn.jobs import limits, slurm
from hpcffn.jobs.listing import Listing, path_pattern
from hpcffn.jobs.state import State, Submission
from hpcffn.jobs.status import collect, output_of
from hpcffn.jobs.submit import dry_run_script, observe, plan_steps
from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir


def _plan(tmp_path: Path, nz: int = 1, ny: int = 5, nx: int = 6, cluster: dict | None = None, **changes):
    """A planned workdir of nz x ny x nx tiles of 21^3 (the smallest the test FOV allows), 1 group."""
    shape = (21 * nz, 21 * ny, 21 * nx)
    spec = spec_dict(subvolume={"size": [21, 21, 21], "overlap": [2, 2, 2], "groups": 1},
                     cluster={"profile": "local", **(cluster or {})}, **changes)
    path = write_spec(tmp_path, spec, data=False)
    write_h5(tmp_path / "data" / "v1.h5", shape=shape)
    planned = make_plan(path)
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)
    return load_plan(tmp_path / "work"), planned


# ---------------------------------------------------------------- O(1) task start
def test_a_task_reads_its_unit_without_the_plan(tmp_path):
    plan, _ = _plan(tmp_path)
    infer = plan.job("infer_g0")
    assert len(infer.units) == 30
    lines = plan.layout.unit_index("infer_g0").read_bytes().splitlines(keepends=True)
    assert len(lines) == 30 and len({len(x) for x in lines}) == 1  # fixed width: task i at byte i x width
    full = {t.name: t for t in plan.tiles}
    plan.layout.plan.write_text("{ not read by a task")  # a task must not need plan.json at all
    for i in (0, 17, 29):
        task, unit = load_task_plan(plan.layout.plan, "infer_g0", i)
        assert unit == infer.units[i] and [t.name for t in task.tiles] == [unit]
        assert task.tile(unit) == full[unit] and task.ffn == plan.ffn and task.volumes == plan.volumes
        assert task.group("g0").voxels == plan.group("g0").voxels
    assert read_unit(plan.layout.root, "partitions", 3)["name"] == plan.job("partitions").units[3]
    with pytest.raises(HpcffnError, match=r"task index 30 is out of range: job infer_g0 has 30 tasks"):
        read_unit(plan.layout.plan, "infer_g0", 30)
    with pytest.raises(HpcffnError, match="re-run `hpcffn plan` to write the unit indexes"):
        read_unit(plan.layout.plan, "no_such_job", 0)


def test_stage_commands_with_job_read_the_index_and_fall_back_to_the_plan(tmp_path):
    plan, _ = _plan(tmp_path)
    task, unit = task_plan(plan.layout.plan, "infer_g0", "4")
    assert unit == plan.job("infer_g0").units[4] and len(task.tiles) == 1
    whole, key = task_plan(plan.layout.plan, None, "4")  # no --job: the whole plan, as before
    assert key == "4" and len(whole.tiles) == 30
    for path in plan.layout.units_dir.iterdir():  # a plan made before the indexes existed
        path.unlink()
    task, unit = load_task_plan(plan.layout.plan, "infer_g0", 4)
    assert unit == plan.job("infer_g0").units[4] and len(task.tiles) == 30


# ---------------------------------------------------------------- status: listings, not a stat per task
def test_path_pattern_builds_the_layouts_paths(tmp_path):
    plan, _ = _plan(tmp_path)
    units = {"convert": "v1", "coordinates": "g0", "train": "g0", "resolve": "v1", "pyramid": "v1_s1_b0",
             "evaluate": "experiment"}
    for stage in ("convert", "partitions", "coordinates", "train", "infer", "joins", "resolve", "relabel", "pyramid",
                  "evaluate"):
        fn, unit = output_of(plan, stage), units.get(stage, "v1_z0_y1_x2")
        expected = fn(unit)
        assert path_pattern(fn)(unit) == (None if expected is None else str(expected)), stage
    marker = path_pattern(lambda u: plan.layout.marker("infer", u))
    assert marker("t") == str(plan.layout.marker("infer", "t"))
    listing = Listing()
    plan.layout.marker("infer", "t").parent.mkdir(parents=True)
    plan.layout.marker("infer", "t").write_text("{}")
    assert listing.exists(marker("t")) and not listing.exists(marker("u")) and not listing.exists("/nowhere/x")


def _stats_during_status(tmp_path: Path, ny: int, nx: int, monkeypatch) -> int:
    plan, _ = _plan(tmp_path, ny=ny, nx=nx)
    calls = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    report = collect(plan)
    monkeypatch.setattr(os, "stat", real)
    assert sum(r.tasks for r in report.rows) > ny * nx
    return len(calls)


def test_status_stats_do_not_grow_with_the_tile_count(tmp_path, monkeypatch):
    """Outputs, markers and progress files are found by listing each folder once."""
    few = _stats_during_status(tmp_path / "few", 2, 2, monkeypatch)
    many = _stats_during_status(tmp_path / "many", 6, 8, monkeypatch)
    assert many == few


# ---------------------------------------------------------------- array limits
def test_pieces_keep_slurm_ids_below_the_limit():
    assert limits.pieces(list(range(30)), 11) == [(0, list(range(11))), (11, list(range(11, 22))),
                                                 (22, list(range(22, 30)))]
    assert limits.pieces([3, 5, 40, 41, 95], 11) == [(0, [3, 5]), (40, [40, 41]), (95, [95])]
    assert limits.pieces(list(range(5)), 1001) == [(0, list(range(5)))]
    for offset, part in limits.pieces(list(range(0, 300, 7)), 11):
        assert all(0 <= t - offset < 11 for t in part)
    assert limits.export_option(0) == [] and limits.export_option(22) == ["--export=ALL,HPCFFN_ARRAY_OFFSET=22"]


def _limits_slurm(scontrol: str, sacctmgr: str) -> FakeSlurm:
    """A scheduler whose scontrol and sacctmgr print these."""
    return FakeSlurm(tools={"scontrol": (0, scontrol, ""), "sacctmgr": (0, sacctmgr, "")})


def test_limits_come_from_the_spec_then_slurm_then_the_profile(tmp_path):
    plan, _ = _plan(tmp_path / "a")
    got = limits.resolve(plan, _limits_slurm("MaxArraySize = 11\n", "50\n"))
    assert (got.max_array_size, got.max_submit_jobs) == (11, 50) and "scontrol" in got.source
    silent = _limits_slurm("", "")
    assert limits.resolve(plan, silent).max_array_size == 1001  # local profile sets none: SLURM's default
    spec_plan, _ = _plan(tmp_path / "b", cluster={"max_array_size": 7})
    assert limits.resolve(spec_plan, _limits_slurm("MaxArraySize = 11\n", "")).max_array_size == 7  # the spec wins
    both, _ = _plan(tmp_path / "c", cluster={"max_array_size": 7, "max_submit_jobs": 9})
    asked = _limits_slurm("MaxArraySize = 11\n", "50\n")
    assert (limits.resolve(both, asked).max_submit_jobs, asked.asked) == (9, [])  # the spec says all: SLURM not asked


def test_scontrol_config_and_sacctmgr_are_parsed():
    text = "Configuration data as of x\nMaxArraySize            = 11\nMaxJobCount             = 10000\n"
    assert slurm.parse_config_value(text, "MaxArraySize") == 11 and slurm.parse_config_value(text, "Nope") is None
    scheduler = _limits_slurm(text, "\n40\n25\n")
    assert scheduler.array_limits() == (11, 25)
    assert [a[0] for a in scheduler.asked] == ["scontrol", "sacctmgr"]
    assert FakeSlurm(tools={}).array_limits() == (None, None)  # neither tool installed


def test_split_array_dry_run_offsets_and_dependencies(tmp_path):
    plan, _ = _plan(tmp_path, stages=["infer", "stitch"],
                    ffn={**spec_dict()["ffn"], "inference": {"checkpoint": "model/ckpt-1"}})
    steps = plan_steps(plan, observe(plan, State(), query=lambda ids: {}), resume=False)
    script = dry_run_script(plan, steps, max_array_size=11)
    lines = [x for x in script.splitlines() if x.startswith("JOB_infer_g0_")]
    assert len(lines) == 3
    assert "--array=0-10 " in lines[0] and "--export" not in lines[0]
    assert "--array=0-10 --export=ALL,HPCFFN_ARRAY_OFFSET=11 " in lines[1]
    assert "--array=0-7 --export=ALL,HPCFFN_ARRAY_OFFSET=22 " in lines[2]
    joins = [x for x in script.splitlines() if x.startswith("JOB_joins_")]  # stitch's first step: every piece
    assert len(joins) == 3 and all(
        '"--dependency=afterok:${JOB_infer_g0_0}:${JOB_infer_g0_1}:${JOB_infer_g0_2}"' in x for x in joins)


def test_a_piece_maps_slurm_ids_back_to_plan_tasks(tmp_path):
    plan, _ = _plan(tmp_path, stages=["infer"], ffn={**spec_dict()["ffn"], "inference": {"checkpoint": "m/ckpt-1"}})
    units = plan.job("infer_g0").units
    piece = Submission(job="infer_g0", job_id="500", submitted="x", sha256="x", tasks=list(range(11, 22)),
                       array_offset=11, units={str(t): units[t] for t in range(11, 22)})
    assert piece.task_id(14) == "500_3"
    infos = {"500_3": slurm.TaskInfo(id="500_3", state="RUNNING"), "500_4": slurm.TaskInfo(id="500_4", state="FAILED")}
    views = {v.task: v for v in observe(plan, State(submissions=[piece]), query=lambda ids: infos)["infer_g0"]}
    assert views[14].category == "alive" and views[15].category == "failed" and views[3].category == "never"
    assert views[16].category == "lost" and views[14].slurm_id == "500_3"
    steps = plan_steps(plan, {"infer_g0": list(views.values())}, resume=True)
    assert 15 in steps[0].tasks and 14 not in steps[0].tasks
    calls = steps[0].calls(11)
    assert [t for _, part, _ in calls for t in part] == steps[0].tasks  # every task once, in order
    assert all(0 <= t - off < 11 for off, part, _ in calls for t in part) and len(calls) == 3


def test_plan_warns_when_an_array_exceeds_the_profiles_limit(tmp_path):
    _, planned = _plan(tmp_path / "a", cluster={"max_array_size": 11})
    assert any("job infer_g0 has 30 tasks, more than MaxArraySize 11 of the spec's cluster: `hpcffn submit` "
               "splits it into 3 arrays" in w for w in planned.warnings), planned.warnings
    _, planned = _plan(tmp_path / "b", cluster={"max_submit_jobs": 40})
    assert any("more than MaxSubmitJobs 40" in w for w in planned.warnings), planned.warnings
    _, planned = _plan(tmp_path / "c")
    assert not any("MaxArraySize" in w for w in planned.warnings)


def test_real_partitions_stage_reads_its_tile_through_the_index(tmp_path):
    """`hpcffn stage partitions --job partitions --tile 3` (what the script runs) without plan.json's tiles."""
    plan, _ = _plan(tmp_path, ny=2, nx=2)
    unit = plan.job("partitions").units[3]
    text = plan.layout.plan.read_text()
    plan.layout.plan.write_text(text.replace(f'"{unit}"', '"renamed_in_plan_json"'))  # only the index knows it
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "stage", "partitions", "--plan", str(plan.layout.plan),
                           "--job", "partitions", "--tile", "3"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert plan.layout.partitions(unit).is_file() and plan.layout.marker("partitions", unit).is_file()


def test_status_loads_the_plan_without_its_tile_records(tmp_path):
    plan, _ = _plan(tmp_path)
    light = load_plan(plan.layout.plan, tiles=False)
    assert light.tiles == [] and light.jobs == plan.jobs and light.groups == plan.groups
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "status", str(plan.layout.root)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "infer_g0" in proc.stdout and "NOT SUBMITTED 30" in proc.stdout, proc.stdout


def test_cancel_names_whole_arrays_not_every_task(tmp_path):
    from hpcffn.jobs.admin import cancel
    from hpcffn.jobs.state import save_state

    plan, _ = _plan(tmp_path, stages=["infer"], ffn={**spec_dict()["ffn"], "inference": {"checkpoint": "m/ckpt-1"}})
    units = plan.job("infer_g0").units
    subs = [Submission(job="infer_g0", job_id=jid, submitted="x", sha256="x", tasks=list(range(lo, hi)),
                       array_offset=lo, units={str(t): units[t] for t in range(lo, hi)})
            for jid, lo, hi in (("600", 0, 11), ("601", 11, 22), ("602", 22, 30))]
    save_state(plan.layout.state, State(submissions=subs))
    states = {s.task_id(t): "RUNNING" for s in subs for t in s.tasks}
    states["601_3"] = "COMPLETED"  # one task of the second piece is done: that piece goes task by task
    queue = FakeSlurm(queue=lambda ids: {i: slurm.TaskInfo(id=i, state=states[i]) for i in ids})
    lines = []
    cancel(plan, echo=lines.append, scheduler=queue)
    assert queue.cancelled == ["600"] + [f"601_{i}" for i in range(11) if i != 3] + ["602"]
    assert lines == [f"cancelled 29 task(s): {' '.join(queue.cancelled)}"]


def test_path_pattern_asks_the_layout_per_unit_where_the_path_is_no_pattern():
    """A path that depends on the unit other than through its name (e.g. on a tile's volume) has
    no concatenation pattern: every unit is asked, and the "\\0" probes must not break status."""
    from hpcffn.jobs.listing import path_pattern

    volumes = {"t1": "a", "t2": "b"}

    def by_volume(tile):
        if tile not in volumes:
            raise KeyError(tile)
        return Path(f"/w/stitch/{volumes[tile]}.ome.zarr")

    pattern = path_pattern(by_volume)
    assert pattern("t1") == "/w/stitch/a.ome.zarr" and pattern("t2") == "/w/stitch/b.ome.zarr"
    assert path_pattern(lambda u: Path(f"/w/markers/x/{u}.done"))("t9") == "/w/markers/x/t9.done"
    assert path_pattern(lambda u: Path("/w/evaluate/report.json"))("any") == "/w/evaluate/report.json"


def test_plan_json_without_tiles_is_cut_only_in_the_layout_plan_writes(tmp_path):
    import json

    plan, _ = _plan(tmp_path)
    light = load_plan(plan.layout.plan, tiles=False)
    assert light.model_copy(update={"tiles": plan.tiles}) == plan
    plan.layout.plan.write_text(json.dumps(plan.model_dump(mode="json")))  # compact: parsed whole
    assert load_plan(plan.layout.plan, tiles=False).jobs == plan.jobs


def test_listing_each_is_exists_of_each_path(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("a.h5", "b.h5"):
        (folder / name).write_text("")
    listing = Listing()
    units = ["a", "b", "c", "x/a"]
    for pattern in (path_pattern(lambda u: folder / f"{u}.h5"), lambda u: f"{folder}/{u}.h5", lambda u: None):
        assert listing.each(pattern, units) == [p is not None and listing.exists(p) for p in map(pattern, units)]
    assert listing.each(path_pattern(lambda u: folder / f"{u}.h5"), ["a", "c"]) == [True, False]
    assert listing.each(path_pattern(lambda u: tmp_path / "none" / f"{u}.h5"), ["a"]) == [False]


def test_pending_array_tasks_share_their_record():
    import json

    text = json.dumps({"jobs": [{"job_id": 5, "array_job_id": 5, "array_task_id": None, "array_task_string": "2-4",
                                 "job_state": "PENDING", "state_reason": "Dependency", "exit_code": 0}]})
    got = slurm.parse_squeue_json(text)
    assert set(got) == {"5_2", "5_3", "5_4"} and got["5_2"] is got["5_4"] and got["5_3"].id == "5_[2-4]"
    got = slurm.parse_sacct("7_[0-1]|PENDING|0:0|Dependency\n")
    assert got["7_0"] is got["7_1"] and got["7_1"].id == "7_[0-1]"


def test_status_counts_without_detail_as_with_it(tmp_path):
    """The table's report (no per-task detail) has the same rows and notes as the full one, and the
    columns observe_jobs keeps are the views observe hands out: re-planned, local, split, whole."""
    from hpcffn.jobs.observe import observe_jobs
    from hpcffn.jobs.state import LocalTask, save_state
    from hpcffn.jobs.status import _notes_of
    from hpcffn.stages.markers import mark_done

    plan, _ = _plan(tmp_path, stages=["infer", "stitch"],
                    ffn={**spec_dict()["ffn"], "inference": {"checkpoint": "m/ckpt-1"}})
    units = plan.job("infer_g0").units
    joins = plan.job("joins").units
    subs = [Submission(job="infer_g0", job_id=jid, submitted="x", sha256="x", tasks=list(range(lo, hi)),
                       array_offset=lo, units={str(t): units[t] for t in range(lo, hi)})
            for jid, lo, hi in (("600", 0, 11), ("601", 11, 22))]
    subs.append(Submission(job="infer_g0", job_id="602", submitted="x", sha256="x", tasks=[3, 40],
                           units={"3": "replanned_away", "40": "gone"}))  # newest for task 3, for another unit
    subs.append(Submission(job="joins", job_id="L1", submitted="x", sha256="x", tasks=[0, 1], local=True,
                           units={"0": joins[0], "1": joins[1]},
                           local_tasks={"0": LocalTask(state="COMPLETED", exit_code=0), "1": LocalTask(state="FAILED")}))
    subs.append(Submission(job="resolve", job_id="700", submitted="x", sha256="x", tasks=None))
    save_state(plan.layout.state, State(submissions=subs))
    infos = {"600_0": slurm.TaskInfo(id="600_0", state="RUNNING", restarts=2),
             "601_4": slurm.TaskInfo(id="601_4", state="FAILED", restarts=1)}
    pending = slurm.TaskInfo(id="600_[1-10]", state="PENDING", reason="Dependency")
    infos.update({f"600_{t}": pending for t in range(1, 11)})
    mark_done(plan, "infer", units[20])  # certifies the unit as planned; its output and joins[0]'s are there
    for path in (plan.layout.segmentation(units[20]), plan.layout.joins(joins[0])):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    queue = FakeSlurm(queue=lambda ids: {i: infos[i] for i in ids if i in infos})
    full, light = collect(plan, scheduler=queue), collect(plan, detail=False, scheduler=queue)
    assert [replace(r, detail=[]) for r in full.rows] == light.rows
    assert {r.job: _notes_of(r) for r in full.rows} == light.notes
    rows = {r.job: r for r in full.rows}
    assert rows["infer_g0"].states == {"RUNNING": 1, "PENDING (Dependency)": 9, "FAILED": 1,  # task 3: re-planned
                                          "COMPLETED (marker)": 1, "UNKNOWN (no marker)": 9, "NOT SUBMITTED": 9}
    assert light.notes["infer_g0"]["requeues"] == 3 and rows["joins"].counts == {"done": 1, "failed": 1, "never": 28}
    state = State(submissions=subs)
    columns = observe_jobs(plan, state, query=lambda ids: infos)
    for name, views in observe(plan, state, query=lambda ids: infos).items():
        assert views == columns[name].views()
        assert [v.slurm_id for v in views] == [d["id"] for d in {r.job: r for r in full.rows}[name].detail]
