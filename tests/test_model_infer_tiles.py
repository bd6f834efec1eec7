"""Several tiles per task (`tiles_per_task` K): every tile's result is exactly the one it gets alone.

No TensorFlow: the "model" (test_model_infer_parallel.CanvasSensitive) reads the whole FOV,
seed channel included, so a row that got another tile's logits or image would change the
segmentation. K tiles of different scenes run side by side; each must equal its own run alone
(segmentation, ids, origins, seeds, FOVs), and one model call must hold every working tile's FOVs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_model_infer import StopAfter
from test_model_infer_parallel import MP, CanvasSensitive

from hpcffn.core.params import InferenceParams
from hpcffn.ffn import synthetic
from hpcffn.ffn.inference import load_state, segment_volume
from hpcffn.ffn.multi_tile import run_side_by_side

SHAPES = [(24, 40, 40), (22, 36, 44), (26, 38, 34), (24, 44, 36)]


def _tile(i: int) -> np.ndarray:
    raw, _ = synthetic.balls_volume(SHAPES[i % 4], radius=(4, 7), gap=2, seed=10 + i)
    return raw


def _summary(r) -> tuple:
    return (r.segments, r.fills, r.seeds_tried, r.fov_evaluations - r.fov_wasted, r.finished,
            {i: (o.start, o.steps) for i, o in r.origins.items()})


@pytest.fixture(scope="module")
def alone():
    """Each of 8 tiles segmented on its own, one fill at a time (FFN's loop)."""
    params = InferenceParams(min_segment_size=30)
    return [segment_volume(_tile(i), CanvasSensitive(), MP, params, log=lambda s: None) for i in range(8)]


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("k", range(1, 9))
def test_k_tiles_side_by_side_equal_each_tile_alone(alone, k, width):
    params = InferenceParams(min_segment_size=30, parallel_fills=width)
    model = CanvasSensitive()
    works = [lambda p, i=i: segment_volume(_tile(i), p, MP, params, log=lambda s: None) for i in range(k)]
    results, stats = run_side_by_side(works, model)
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.segmentation, alone[i].segmentation)
        assert _summary(r) == _summary(alone[i])
    assert stats.calls == len(model.batches) and stats.fovs == sum(model.batches)
    assert stats.fovs == sum(r.fov_evaluations for r in results)
    if width == 1:
        # one FOV of every working tile per call: K per call while all K tiles work
        assert stats.full_fovs_per_call == k
        assert stats.calls == max(r.fov_evaluations for r in results)
    else:
        assert max(model.batches) <= k * width


def test_stopped_tiles_resume_each_from_its_own_state(alone, tmp_path):
    """A stop (a signal before the time limit) saves every tile's state; a run with another K
    (and parallel_fills) resumes each tile where it stopped, to the same result."""
    params = InferenceParams(min_segment_size=30, parallel_fills=2)
    states = [tmp_path / f"t{i}.state" for i in range(4)]
    first = [lambda p, i=i: segment_volume(_tile(i), p, MP, params, state_path=states[i], fp="x",
                                           stop=StopAfter(15 + 5 * i), log=lambda s: None) for i in range(4)]
    stopped, _ = run_side_by_side(first, CanvasSensitive())
    assert not any(r.finished for r in stopped)
    assert all(load_state(states[i], "x", _tile(i).shape) is not None for i in range(4))
    again = [lambda p, i=i: segment_volume(_tile(i), p, MP, params.model_copy(update={"parallel_fills": 1}),
                                           state_path=states[i], fp="x", log=lambda s: None) for i in range(4)]
    resumed, _ = run_side_by_side(again, CanvasSensitive())
    for i, r in enumerate(resumed):
        np.testing.assert_array_equal(r.segmentation, alone[i].segmentation)
        assert {j: (o.start, o.steps) for j, o in r.origins.items()} == \
            {j: (o.start, o.steps) for j, o in alone[i].origins.items()}


def test_a_failing_tile_ends_the_task_with_its_error_and_the_others_do_not_hang():
    params = InferenceParams(min_segment_size=30)

    def broken(predict):
        predict(np.zeros((1,) + (9, 9, 9, 2), np.float32))
        raise ValueError("tile 1 broke")

    works = [lambda p: segment_volume(_tile(0), p, MP, params, log=lambda s: None), broken]
    with pytest.raises(ValueError, match="tile 1 broke"):
        run_side_by_side(works, CanvasSensitive())
    results, _ = run_side_by_side(works, CanvasSensitive(), keep_errors=True)
    assert results[0].finished and isinstance(results[1], ValueError)  # the healthy tile ran to its end


def test_a_failing_model_call_reaches_every_tile():
    params = InferenceParams(min_segment_size=30)

    def failing(batch):
        raise MemoryError("out of GPU memory")

    works = [lambda p, i=i: segment_volume(_tile(i), p, MP, params, log=lambda s: None) for i in range(3)]
    with pytest.raises(RuntimeError, match="out of GPU memory"):
        run_side_by_side(works, failing)


def _plan(tmp_path, k: int, consensus: bool = False):
    """A hand-made plan of one 22x34x102 volume in 3 tiles of group g0, with tiles_per_task k."""
    from hpcffn.core.params import ConsensusParams, FFNParams
    from hpcffn.core.plan_model import (
        Box,
        GroupPlan,
        Plan,
        TilePlan,
        VolumePlan,
        write_plan,
    )
    from hpcffn.core.units import write_unit_indexes
    from hpcffn.plan.planner import plan_jobs

    raw = np.concatenate([_tile(i)[:22, :34, :34] for i in range(3)], axis=2)
    import h5py

    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("raw", data=raw)
    vol = VolumePlan(name="v", shape=raw.shape, raw=f"{tmp_path}/v.h5:raw", raw_source=f"{tmp_path}/v.h5:raw")
    tiles = [TilePlan(name=f"v_z0_y0_x{j}", volume="v", index=(0, 0, j), box=Box(start=(0, 0, 34 * j), size=(22, 34, 34)),
                      infer_box=Box(start=(0, 0, 34 * j), size=(22, 34, 34)), group="g0") for j in range(3)]
    groups = [GroupPlan(name="g0", tiles=[t.name for t in tiles], voxels=raw.size)]
    ffn = FFNParams(model=MP, inference=InferenceParams(min_segment_size=30, tiles_per_task=k,
                                                        checkpoint=str(tmp_path / "ck" / "ckpt-1"),
                                                        consensus=ConsensusParams() if consensus else None))
    jobs = plan_jobs(["infer"], [vol], tiles, groups, consensus=consensus, tiles_per_task=k)
    plan = Plan(hpcffn_version="test", name="t", workdir=str(tmp_path / f"work{k}"), spec_file="t.yaml", spec={},
                ffn=ffn, volumes=[vol], tiles=tiles, groups=groups, jobs=jobs)
    write_plan(plan, plan.layout.plan)
    write_unit_indexes(plan)
    return plan


@pytest.mark.tf
def test_a_planned_task_of_k_tiles_writes_each_tile_as_k_1_does(tmp_path):
    """Through the plan: the infer array has ceil(3/2) tasks; task 0 segments two tiles in one
    process and marks each (and itself) done; every tile's file equals the one-tile-per-task run's."""
    import h5py
    import tensorflow as tf

    from hpcffn.core.units import load_task_plan
    from hpcffn.ffn.model import build_model
    from hpcffn.stages import infer, markers

    model = build_model(MP, seed=3)
    tf.train.Checkpoint(model=model, step=tf.Variable(1, dtype=tf.int64)).write(str(tmp_path / "ck" / "ckpt-1"))
    one, two = _plan(tmp_path, 1), _plan(tmp_path, 2)
    assert one.job("infer_g0").units == ["v_z0_y0_x0", "v_z0_y0_x1", "v_z0_y0_x2"]
    assert two.job("infer_g0").units == ["v_z0_y0_x0+1", "v_z0_y0_x2"]
    for i in range(3):
        task, unit = load_task_plan(one.layout.plan, "infer_g0", i)
        assert infer.run_from_plan(task, unit, log=lambda s: None) == 0
    from hpcffn.commands.job_views import status_table
    from hpcffn.core.plan_model import load_plan
    from hpcffn.jobs.status import collect

    def infer_row():
        return next(r for r in collect(load_plan(two.layout.plan, tiles=False)).rows if r.job == "infer_g0")

    assert (infer_row().tasks, infer_row().tile_outputs, infer_row().tiles) == (2, 0, 3)
    lines = []
    for i in range(2):
        task, unit = load_task_plan(two.layout.plan, "infer_g0", i)
        assert [t.name for t in task.tiles] == [["v_z0_y0_x0", "v_z0_y0_x1"], ["v_z0_y0_x2"]][i]
        assert infer.run_from_plan(task, unit, log=lines.append) == 0
    side = next(line for line in lines if "2 tiles side by side" in line)
    assert int(re.search(r"(\d+) FOVs", side)[1]) >= 10 and "2.00 while all 2 tiles worked" in side, side
    for t in one.tiles:
        with h5py.File(one.layout.segmentation(t.name), "r") as a, h5py.File(two.layout.segmentation(t.name), "r") as b:
            np.testing.assert_array_equal(a["seg"][...], b["seg"][...])
            assert tuple(b.attrs["offset"]) == tuple(t.infer_box.start)
        assert markers.is_done(two, "infer", t.name)
    assert markers.is_done(two, "infer", "v_z0_y0_x0+1")
    row = infer_row()
    assert (row.outputs, row.tile_outputs, row.counts) == (2, 3, {"never": 2})
    assert [t["tiles"] for t in row.detail if "tiles" in t] == []  # done tasks list no part-way tiles
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status_table(two, collect(load_plan(two.layout.plan, tiles=False))))
    assert "2/2 (3/3 tiles)" in console.export_text()
    pytest.importorskip("matplotlib")
    from hpcffn.report.build import write_report

    html = write_report(load_plan(two.layout.plan)).read_text()
    assert "(3/3 tiles)" in html and "GPU-hours" in html and "model calls" in html
    # a rerun of a finished task finds its tiles done and rewrites nothing
    task, unit = load_task_plan(two.layout.plan, "infer_g0", 0)
    before = two.layout.segmentation("v_z0_y0_x0").stat().st_mtime_ns
    assert infer.run_from_plan(task, unit, log=lambda s: None) == 0
    assert two.layout.segmentation("v_z0_y0_x0").stat().st_mtime_ns == before


@pytest.mark.tf
def test_the_reverse_pass_of_a_task_of_k_tiles_writes_each_tile_as_k_1_does(tmp_path):
    """With consensus, the reverse array's tasks of two tiles seed each tile at its own forward
    pass's origins: each tile's reverse pass equals the one-tile-per-task run's."""
    import h5py
    import tensorflow as tf

    from hpcffn.core.units import load_task_plan
    from hpcffn.ffn.model import build_model
    from hpcffn.stages import infer, markers

    model = build_model(MP, seed=3)
    tf.train.Checkpoint(model=model, step=tf.Variable(1, dtype=tf.int64)).write(str(tmp_path / "ck" / "ckpt-1"))
    plans = {k: _plan(tmp_path, k, consensus=True) for k in (1, 2)}
    for plan in plans.values():
        for stage, pass_name in (("infer", "forward"), ("reverse", "reverse")):
            job = f"{stage}_g0"
            for i in range(len(plan.job(job).units)):
                task, unit = load_task_plan(plan.layout.plan, job, i)
                assert infer.run_from_plan(task, unit, log=lambda s: None, job=job, pass_name=pass_name) == 0
    for t in plans[1].tiles:
        for stage in ("infer", "reverse"):
            with h5py.File(plans[1].infer_output(stage, t.name), "r") as a, \
                    h5py.File(plans[2].infer_output(stage, t.name), "r") as b:
                np.testing.assert_array_equal(a["seg"][...], b["seg"][...])
                assert a["origins"].shape == b["origins"].shape
        assert markers.is_done(plans[2], "reverse", t.name)
    assert markers.is_done(plans[2], "reverse", "v_z0_y0_x0+1")
