"""The planned, parallel stitch (joins -> resolve -> relabel -> pyramid) into one OME-Zarr volume.

Its result must be the single-task stitch's, object for object (and id for id: both number
the objects the same way), written with chunks that never straddle two tiles' cores.
"""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr
from test_model_stitch import fake_inference, gappy_inference, planned, same_objects  # noqa: F401 (fixture)

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import StitchParams
from hpcffn.io import ome_zarr
from hpcffn.stages import joins, pyramid, relabel, resolve
from hpcffn.stages import stitch as single


def run_steps(plan, params=None, log=lambda s: None) -> None:
    """Every task of the planned stitch jobs, in plan order (what submit would run)."""
    modules = {"joins": joins, "resolve": resolve, "relabel": relabel, "pyramid": pyramid}
    for job in plan.jobs:
        if job.stage in modules:
            for unit in reversed(job.units):  # any order within a job must do
                extra = {"params": params} if job.stage == "joins" else {}
                modules[job.stage].run_from_plan(plan, unit, log=log, **extra)


@pytest.fixture
def stitched(planned):  # noqa: F811
    """The tiny plan, its tiles segmented (fake_inference) and stitched by the planned steps."""
    plan, labels = planned
    fake_inference(plan, labels)
    run_steps(plan)
    return plan


def test_parallel_stitch_gives_the_single_task_result(planned, monkeypatch):  # noqa: F811
    monkeypatch.setattr(single, "SLAB_VOXELS", 5 * 74 * 70)  # tiles read a few slices at a time
    plan, labels = planned
    fake_inference(plan, labels)
    reference = single.run_from_plan(plan, "v1", log=lambda s: None)
    run_steps(plan)
    store = plan.layout.stitched("v1")
    seg = zarr.open_array(str(store / "labels" / "seg" / "0"), mode="r")
    with h5py.File(plan.layout.stitched_hdf5("v1")) as f:
        expected = f["seg"][...]
    assert np.array_equal(seg[...], expected)  # id for id
    assert same_objects(seg[...], labels)
    assert seg.dtype == np.uint8 and reference["segments"] <= 255  # the smallest dtype for K ids
    with h5py.File(plan.volumes[0].raw) if ":" not in plan.volumes[0].raw else h5py.File(plan.volumes[0].raw.rpartition(":")[0]) as f:
        raw = f[plan.volumes[0].raw.rpartition(":")[2]][...]
    assert np.array_equal(zarr.open_array(str(store / "0"), mode="r")[...], raw)
    for t in plan.tiles:
        assert plan.layout.marker("relabel", t.name).is_file() and plan.layout.marker("joins", t.name).is_file()


def test_gaps_are_filled_as_the_single_task_fills_them(planned, monkeypatch):  # noqa: F811
    monkeypatch.setattr(single, "SLAB_VOXELS", 5 * 74 * 70)  # tiles and neighbours read a few slices at a time
    plan, labels = planned
    filled, unfilled = gappy_inference(plan, labels)
    t0, t1, t2, t3 = (t.name for t in plan.tiles)
    for params, expected in ((StitchParams(resegment=False), filled),
                             (StitchParams(resegment=False, fill_gaps=False), unfilled)):
        reference = single.run_from_plan(plan, "v1", params, log=lambda s: None)
        run_steps(plan, params)
        seg = zarr.open_array(str(plan.layout.stitched("v1") / "labels" / "seg" / "0"), mode="r")[...]
        with h5py.File(plan.layout.stitched_hdf5("v1")) as f:
            assert np.array_equal(seg, f["seg"][...])  # id for id
        assert same_objects(seg, expected) and seg.max() == reference["segments"] == len(np.unique(expected)) - 1
        first, second = (np.load(plan.layout.joins(t)) for t in (t0, t1))
        if params.fill_gaps:  # every neighbour whose infer box reaches into the core, earlier ones too
            assert first["fill_neighbours"].tolist() == [t1, t2, t3] and second["fill_neighbours"].tolist() == [t0, t2, t3]
            assert {0, 1} <= set(first["fills"][:, 0].tolist()) and set(second["fills"][:, 0].tolist()) == {0}
        else:
            assert first["fills"].shape == second["fills"].shape == (0, 2)


def test_joins_files_from_before_fill_gaps_stitch_without_fills(planned):  # noqa: F811
    """Default plans keep their fingerprints, so joins done before fill_gaps stay done: resolve
    and relabel then fill nothing (and agree on it) instead of failing."""
    plan, labels = planned
    _, unfilled = gappy_inference(plan, labels)
    run_steps(plan)
    for t in plan.tiles:
        with np.load(plan.layout.joins(t.name)) as f:
            old = {k: f[k] for k in ("biggest", "owned", "neighbours", "pairs")}
        joins.save_npz(plan.layout.joins(t.name), **old)
    resolve.run_from_plan(plan, "v1", log=lambda s: None)
    for t in plan.tiles:
        relabel.run_from_plan(plan, t.name, log=lambda s: None)
    seg = zarr.open_array(str(plan.layout.stitched("v1") / "labels" / "seg" / "0"), mode="r")[...]
    assert same_objects(seg, unfilled) and seg.max() == len(np.unique(unfilled)) - 1


def test_store_is_ome_zarr_with_a_pyramid(planned):  # noqa: F811
    plan, labels = planned
    fake_inference(plan, labels)
    run_steps(plan)
    store = plan.layout.stitched("v1")
    root = json.loads((store / ".zattrs").read_text())["multiscales"][0]
    seg_meta = json.loads((store / "labels" / "seg" / ".zattrs").read_text())
    assert root["version"] == "0.4" and [a["name"] for a in root["axes"]] == ["z", "y", "x"]
    assert json.loads((store / "labels" / ".zattrs").read_text()) == {"labels": ["seg"]}
    assert "image-label" in seg_meta
    levels = [d["path"] for d in seg_meta["multiscales"][0]["datasets"]]
    assert len(levels) >= 2 and levels == [str(s) for s in range(len(levels))]
    pyr_jobs = [j for j in plan.jobs if j.stage == "pyramid"]
    assert [j.name for j in pyr_jobs] == [f"pyramid_s{s}" for s in range(1, len(levels))]
    assert [d.job for d in pyr_jobs[-1].depends_on] == ([f"pyramid_s{len(levels) - 2}"] if len(levels) > 2 else ["relabel"])
    prev = zarr.open_array(str(store / "labels" / "seg" / "0"), mode="r")[...]
    for s in range(1, len(levels)):
        level = zarr.open_array(str(store / "labels" / "seg" / str(s)), mode="r")[...]
        assert level.shape == tuple(-(-n // 2) for n in prev.shape)
        assert np.array_equal(level, pyramid.mode_downsample(prev))
        prev = level


def test_chunks_align_with_tile_cores(planned):  # noqa: F811
    plan, _ = planned
    size = plan.spec.subvolume.size
    chunks = ome_zarr.chunk_shape(size, plan.volumes[0].shape)
    for t in plan.tiles:
        assert all(s % c == 0 for s, c in zip(t.box.start, chunks))
        stop = [s + n for s, n in zip(t.box.start, t.box.size)]
        assert all(e % c == 0 or e == d for e, c, d in zip(stop, chunks, plan.volumes[0].shape))
    shapes = ome_zarr.level_shapes(plan.volumes[0].shape, chunks)
    for level, blocks in enumerate(ome_zarr.pyramid_blocks(plan.volumes[0].shape, size), start=1):
        covered = np.zeros(shapes[level], int)
        for start, extent in blocks:  # whole chunks of the level, each voxel in exactly one block
            assert all(s % c == 0 for s, c in zip(start, chunks))
            assert all((s + n) % c == 0 or s + n == d for s, n, c, d in zip(start, extent, chunks, shapes[level]))
            covered[tuple(slice(s, s + n) for s, n in zip(start, extent))] += 1
        assert (covered == 1).all()
    assert ome_zarr.chunk_edge(500, 4000) == 50 and ome_zarr.chunk_edge(64, 128) == 64
    assert ome_zarr.label_dtype(255) == np.uint8 and ome_zarr.label_dtype(256) == np.uint16


def test_mode_and_mean_downsampling():
    a = np.array([[[1, 1], [2, 0]], [[1, 3], [0, 0]]], np.uint16)  # one cell: 1 x3, 0 x3 -> the smaller, 0
    assert pyramid.mode_downsample(a).tolist() == [[[0]]]
    a[1, 1, 1] = 1
    assert pyramid.mode_downsample(a).tolist() == [[[1]]]
    odd = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    assert pyramid.mean_downsample(odd).shape == (2, 2, 2) and pyramid.mean_downsample(odd)[1, 1, 1] == 26


def test_relabel_before_resolve_is_one_clear_error(planned):  # noqa: F811
    plan, labels = planned
    fake_inference(plan, labels)
    with pytest.raises(HpcffnError, match="no joins .*run its joins task first"):
        resolve.run_from_plan(plan, "v1")
    with pytest.raises(HpcffnError, match="no relabelling .*run its resolve task first"):
        relabel.run_from_plan(plan, plan.tiles[0].name)


def test_evaluate_compares_the_stitched_volume_as_a_whole(planned, monkeypatch):  # noqa: F811
    import hpcffn.stages.evaluate as evaluate_mod
    from hpcffn.stages.evaluate import Contingency, compare, evaluate_stitched
    from hpcffn.stages.evaluate import run_from_plan as evaluate

    plan, labels = planned
    monkeypatch.setattr(evaluate_mod, "SLAB_VOXELS", 2 * 130 * 70)  # 50 slabs of 2 slices: partial tables merge
    fake_inference(plan, labels)
    # Without joins every object crossing a tile border stays split: only the whole-volume
    # figures see that; per tile, each tile is perfect.
    run_steps(plan, StitchParams(min_overlap_voxels=10**9, resegment=False))
    report = evaluate(plan, log=lambda s: None)
    assert report["overall"]["adapted_rand_error"] == pytest.approx(0.0)
    split = report["stitched"]["v1"]
    assert split["adapted_rand_error"] > 0.01 and split["rand_recall"] < 0.97 and split["rand_precision"] == pytest.approx(1.0)
    whole = compare(zarr.open_array(str(plan.layout.stitched("v1") / "labels" / "seg" / "0"), mode="r")[...], labels)
    assert split == pytest.approx(whole)  # slab by slab == all at once
    run_steps(plan)
    assert evaluate(plan, log=lambda s: None)["stitched"]["v1"]["adapted_rand_error"] == pytest.approx(0.0)
    assert evaluate_stitched(plan.layout.stitched("v1"), plan.volume("v1"))["objects"] == len(np.unique(labels)) - 1
    assert Contingency().metrics()["adapted_rand_error"] is None


def test_export_writes_the_volume_as_tif_slices(planned, tmp_path):  # noqa: F811
    import tifffile

    plan, labels = planned
    fake_inference(plan, labels)
    run_steps(plan)
    store = plan.layout.stitched("v1")
    out = tmp_path / "slices"
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "export", str(store), str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    stack = np.stack([tifffile.imread(p) for p in sorted(out.glob("*.tif"))])
    assert stack.dtype == np.uint8 and same_objects(stack, labels)
    level1 = tmp_path / "level1.tif"
    proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "export", f"{store}:labels/seg/1", str(level1)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert tifffile.imread(level1).shape == tuple(-(-n // 2) for n in labels.shape)
    bad = subprocess.run([sys.executable, "-m", "hpcffn.cli", "export", f"{store}:labels/nothing/0", str(tmp_path / "x")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "has no array 'labels/nothing/0'" in bad.stderr and "Traceback" not in bad.stderr


def test_rendered_scripts_run_the_steps(planned):  # noqa: F811
    """Each array task as SLURM would start it: the script, with SLURM_ARRAY_TASK_ID."""
    import os

    plan, labels = planned
    fake_inference(plan, labels)
    for job in plan.jobs:
        if job.stage in ("joins", "resolve", "relabel", "pyramid"):
            for i in range(len(job.units)):
                env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(i)}
                proc = subprocess.run(["bash", str(plan.layout.root / job.script)], env=env,
                                      capture_output=True, text=True, check=False)
                assert proc.returncode == 0, proc.stdout + proc.stderr
    seg = zarr.open_array(str(plan.layout.stitched("v1") / "labels" / "seg" / "0"), mode="r")[...]
    assert same_objects(seg, labels)
    assert all(plan.layout.marker("pyramid", u).is_file() for j in plan.jobs if j.stage == "pyramid" for u in j.units)


def test_step_commands_need_their_unit(planned):  # noqa: F811
    plan, _ = planned
    for args, needs in ((["joins"], "--tile"), (["relabel"], "--tile"), (["resolve"], "--volume"),
                        (["pyramid", "--block", "0"], "--job pyramid_s<level>"), (["pyramid", "--block", "v1_s9_b0"], "re-run `hpcffn plan`")):
        proc = subprocess.run([sys.executable, "-m", "hpcffn.cli", "stage", *args[:1], "--plan", str(plan.layout.plan), *args[1:]],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and needs in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_rerun_removes_its_own_partial_chunks_only(stitched):
    """A relabel or pyramid task killed mid-chunk leaves zarr's `<chunk>.<hex>.partial` files:
    its re-run removes those of its own chunks and leaves other tasks' (maybe live) alone."""
    plan = stitched
    store = plan.layout.stitched("v1")
    chunks = ome_zarr.chunk_shape(plan.spec.subvolume.size, plan.volumes[0].shape)

    def leftover(array: str, start):
        row = store / array / str(start[0] // chunks[0]) / str(start[1] // chunks[1])
        path = row / f"{start[2] // chunks[2]}.{'ab' * 16}.partial"
        path.write_bytes(b"half a chunk")
        return path

    mine, theirs = plan.tiles[0], plan.tiles[-1]
    own = [leftover("labels/seg/0", mine.box.start), leftover("0", mine.box.start)]
    other = leftover("labels/seg/0", theirs.box.start)
    relabel.run_from_plan(plan, mine.name, log=lambda s: None)
    assert not any(p.exists() for p in own) and other.exists()
    blocks = ome_zarr.pyramid_blocks(plan.volumes[0].shape, plan.spec.subvolume.size)[0]
    assert len(blocks) > 1
    own, other = leftover("labels/seg/1", blocks[0][0]), leftover("1", blocks[-1][0])
    pyramid.run_from_plan(plan, "v1_s1_b0", log=lambda s: None)
    assert not own.exists() and other.exists()
    assert ome_zarr.damaged_chunks(store) == []
