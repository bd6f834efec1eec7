"""`ffn.inference.tiles_per_task` K in the plan: ceil(tiles/K) infer tasks, each reading its
tiles from one unit-index line; K = 1 plans as before; the summary shows the inference estimate."""

from __future__ import annotations

import copy
import json

from plan_helpers import BASE_SPEC, spec_dict, write_spec
from typer.testing import CliRunner

from hpcffn.cli import app
from hpcffn.core.units import infer_task_tiles, load_task_plan
from hpcffn.plan.cost import DEFAULT_FOV_PER_SECOND, FOVS_PER_VOXEL, infer_costs
from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir


def write_planned(planned) -> None:
    p = planned.plan
    write_workdir(p, planned.scripts, planned.resolved_yaml, force=False, dry_run=False)


def _spec(tmp_path, inference: dict, name="exp.yaml"):
    ffn = copy.deepcopy(BASE_SPEC["ffn"])
    ffn["inference"] = inference
    spec = spec_dict(ffn=ffn, subvolume={"size": [32, 32, 32], "overlap": [4, 4, 4], "groups": 2})
    return write_spec(tmp_path / name.removesuffix(".yaml"), spec)


def test_tasks_of_k_tiles_and_their_unit_lines(tmp_path):
    one = make_plan(_spec(tmp_path, {})).plan
    four = make_plan(_spec(tmp_path, {"tiles_per_task": 4}, "four.yaml"))
    write_planned(four)
    plan = four.plan
    for j1, j4 in zip([j for j in one.jobs if j.stage == "infer"], [j for j in plan.jobs if j.stage == "infer"]):
        tiles = j1.units
        assert len(j4.units) == -(-len(tiles) // 4) and len(tiles) > 4
        members = infer_task_tiles(plan, j4)
        assert [t for u in j4.units for t in members.get(u, [u])] == tiles  # every tile once, in order
        assert j4.units[0] == f"{tiles[0]}+3"
        task, unit = load_task_plan(plan.layout.plan, j4.name, 0)
        assert unit == j4.units[0] and [t.name for t in task.tiles] == tiles[:4]
        last, unit = load_task_plan(plan.layout.plan, j4.name, len(j4.units) - 1)
        assert [t.name for t in last.tiles] == members.get(unit, [unit])
    # other jobs are untouched
    assert [(j.name, j.units) for j in one.jobs if j.stage != "infer"] == \
        [(j.name, j.units) for j in plan.jobs if j.stage != "infer"]
    # a plan read without its tiles (status) finds the tasks' tiles in the unit index
    from hpcffn.core.plan_model import load_plan

    bare = load_plan(plan.layout.plan, tiles=False)
    job = next(j for j in bare.jobs if j.stage == "infer")
    assert infer_task_tiles(bare, job) == infer_task_tiles(plan, job)


def test_the_estimate_per_group_follows_tiles_k_and_fov_rate(tmp_path):
    planned = make_plan(_spec(tmp_path, {"tiles_per_task": 4, "fov_per_second": 90.0}))
    costs = infer_costs(planned.plan)
    assert [c.job for c in costs] == [j.name for j in planned.plan.jobs if j.stage == "infer"]
    for c in costs:
        tiles = [t for t in planned.plan.tiles if t.group == c.group]
        fovs = sum(t.infer_box.voxels for t in tiles) * FOVS_PER_VOXEL
        assert c.tiles == len(tiles) and abs(c.fovs - fovs) < 1e-6
        assert abs(c.model_calls - fovs / 4) < 1e-6 and abs(c.hours - fovs / 90.0 / 3600) < 1e-9
    default = infer_costs(make_plan(_spec(tmp_path, {}, "d.yaml")).plan)[0]
    assert abs(default.hours - default.fovs / DEFAULT_FOV_PER_SECOND / 3600) < 1e-9
    assert default.model_calls == default.fovs


def test_plan_prints_the_estimate(tmp_path):
    spec = _spec(tmp_path, {"tiles_per_task": 2, "fov_per_second": 60})
    out = CliRunner().invoke(app, ["plan", str(spec)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "inference estimate: 2 tiles per task, 60 FOV/s per task" in out.output
    assert "GPU-hours" in out.output and "ffn.inference.fov_per_second" in out.output


def test_bad_tiles_per_task_is_a_one_line_error(tmp_path):
    import pytest

    from hpcffn.core.errors import HpcffnError

    with pytest.raises(HpcffnError, match=r"ffn\.inference\.tiles_per_task: Input should be greater than or equal to 1"):
        make_plan(_spec(tmp_path, {"tiles_per_task": 0}))


def test_one_tile_per_task_keeps_the_unit_index_of_tiles(tmp_path):
    planned = make_plan(_spec(tmp_path, {}))
    write_planned(planned)
    job = next(j for j in planned.plan.jobs if j.stage == "infer")
    line = planned.plan.layout.unit_index(job.name).read_text().splitlines()[0]
    assert json.loads(line)["name"] == job.units[0] and "tiles" not in json.loads(line)


def test_defaults_leave_plan_json_as_it_was(tmp_path):
    """K = 1, float32 and no FOV/s: none of the new options is written (plans stay byte for byte)."""
    planned = make_plan(_spec(tmp_path, {}))
    write_planned(planned)
    text = planned.plan.layout.plan.read_text() + planned.plan.layout.plan_head.read_text()
    assert not any(key in text for key in ('"tiles_per_task"', '"precision"', '"fov_per_second"'))
    set_ = make_plan(_spec(tmp_path, {"tiles_per_task": 2, "precision": "mixed_float16"}, "k2.yaml"))
    write_planned(set_)
    loaded = json.loads(set_.plan.layout.plan.read_text())["ffn"]["inference"]
    assert (loaded["tiles_per_task"], loaded["precision"]) == (2, "mixed_float16")


def test_check_of_a_task_of_several_tiles_reads_their_volume(tmp_path):
    from hpcffn.stages.probe import _inputs

    plan = make_plan(_spec(tmp_path, {"tiles_per_task": 3})).plan
    job = next(j for j in plan.jobs if j.stage == "infer")
    assert job.units[0].endswith("+2")
    assert _inputs(plan, "infer", "0", job.name) == [plan.volume("v1").raw_source, plan.volume("v1").groundtruth_source]


def test_reverse_arrays_take_tasks_of_k_tiles_too(tmp_path):
    planned = make_plan(_spec(tmp_path, {"tiles_per_task": 2, "consensus": {}}))
    write_planned(planned)
    plan = planned.plan
    infer = {j.group: j.units for j in plan.jobs if j.stage == "infer"}
    reverse = {j.group: j.units for j in plan.jobs if j.stage == "reverse"}
    assert infer == reverse and all(u.endswith("+1") for units in infer.values() for u in units[:-1])
    job = next(j for j in plan.jobs if j.stage == "reverse")
    task, unit = load_task_plan(plan.layout.plan, job.name, 0)
    assert unit == job.units[0] and len(task.tiles) == 2
    assert next(j for j in plan.jobs if j.stage == "consensus").units == [t.name for t in plan.tiles]


class _Unread(list):
    """A plan's job list that must not be read (a task's fingerprint is a dict hit)."""

    def __iter__(self):
        raise AssertionError("task_fingerprint scanned plan.jobs")


def test_a_tile_of_a_task_of_k_tiles_has_its_task_fingerprint_without_a_scan(tmp_path, monkeypatch):
    """Each tile's marker certifies its task's fingerprint: found from the loaded task, not by
    searching every job's units; a whole plan (a stage run by tile name) finds the same."""
    from hpcffn.core import units
    from hpcffn.core.units import read_fingerprint, task_fingerprint

    planned = make_plan(_spec(tmp_path, {"tiles_per_task": 2}))
    write_planned(planned)
    plan = planned.plan
    job = next(j for j in plan.jobs if j.stage == "infer")
    for i in (0, len(job.units) - 1):
        task, unit = load_task_plan(plan.layout.plan, job.name, i)
        expected = read_fingerprint(plan.workdir, job.name, i)
        assert expected is not None
        blind = task.model_copy(update={"jobs": _Unread(task.jobs)})
        for name in [unit, *(t.name for t in task.tiles)]:
            assert task_fingerprint(blind, "infer", name) == expected, name
            assert task_fingerprint(plan, "infer", name) == expected, name
    monkeypatch.setattr(units, "_TASKS", {})  # no task loaded: the whole plan is searched
    for job in [j for j in plan.jobs if j.stage == "infer"]:
        for i, unit in enumerate(job.units):
            for name in [unit, *infer_task_tiles(plan, job).get(unit, [])]:
                assert task_fingerprint(plan, "infer", name) == read_fingerprint(plan.workdir, job.name, i), name
    assert task_fingerprint(plan, "infer", "no_such_tile") is None


def test_plan_warns_when_k_canvases_exceed_the_infer_memory(tmp_path):
    """A task of K tiles holds K canvases: `hpcffn plan` warns when their estimate is above
    cluster.infer.memory; K = 1 warns as before (not at all here)."""
    from hpcffn.plan.cost import (
        CANVAS_BYTES_PER_VOXEL,
        PEAK_BYTES_PER_VOXEL,
        task_memory,
    )
    from hpcffn.plan.limits import memory_bytes

    def planned(inference: dict, memory: str, name: str):
        spec = _spec(tmp_path, inference, name)
        text = spec.read_text().replace("profile: local", f"profile: local\n  infer:\n    memory: {memory}")
        assert text != spec.read_text()
        spec.write_text(text)
        return make_plan(spec)

    four = planned({"tiles_per_task": 4}, "2M", "four.yaml")
    needed, tiles = task_memory(four.plan.tiles, four.plan.jobs, 4)
    voxels = [t.infer_box.voxels for t in four.plan.tiles]
    per_task = [(4 * CANVAS_BYTES_PER_VOXEL + PEAK_BYTES_PER_VOXEL) * v for v in (min(voxels), max(voxels))]
    assert tiles == 4 and per_task[0] <= needed <= per_task[1]
    assert needed > memory_bytes("2M")
    warned = [w for w in four.warnings if "tiles_per_task" in w]
    assert len(warned) == 1 and "its 4 tiles" in warned[0] and "cluster.infer.memory 2M" in warned[0], four.warnings
    assert not [w for w in planned({"tiles_per_task": 4}, "64G", "roomy.yaml").warnings if "tiles_per_task" in w]
    assert not [w for w in planned({}, "2M", "one.yaml").warnings if "tiles_per_task" in w]
    assert (memory_bytes("2M"), memory_bytes("8000"), memory_bytes("1G"), memory_bytes("3K")) == \
        (2 << 20, 8000 << 20, 1 << 30, 3 << 10)


def test_tasks_tiles_are_found_in_one_pass_over_the_tiles():
    """Bundles' tiles (unit indexes, fingerprints, a tile's task) come from one pass over the
    plan's tiles, not a search of them per bundle: 60,000 tiles in K = 2 take well under seconds
    (per-bundle search: about a minute here)."""
    import time
    from types import SimpleNamespace

    from hpcffn.core.bundles import Runs, bundle_name, bundles, members
    from hpcffn.core.plan_model import JobPlan
    from hpcffn.core.units import _bundle_holding, task_tiles

    tiles = [SimpleNamespace(name=f"v_{i}", group=f"g{i % 3 % 2}") for i in range(60_000)]
    jobs = [JobPlan(name=f"infer_{g}", stage="infer", script="x", sha256="", array=True, group=g,
                    units=[bundle_name(b) for b in bundles([t.name for t in tiles if t.group == g], 2)])
            for g in ("g0", "g1")]
    plan = SimpleNamespace(tiles=tiles, jobs=jobs)
    start = time.perf_counter()
    found = {u: ts for job in jobs for u, ts in task_tiles(plan, job, Runs(tiles)).items()}
    assert _bundle_holding(plan, "infer", tiles[-1].name) == ("infer_g0", len(jobs[0].units) - 1)
    assert time.perf_counter() - start < 5
    assert sum(map(len, found.values())) == len(tiles)
    for u in (jobs[0].units[0], jobs[1].units[7], jobs[1].units[-1]):
        assert found[u] == [t.name for t in members(tiles, u)]
