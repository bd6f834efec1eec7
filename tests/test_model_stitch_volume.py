"""The planned, parallel stitch (joins -> resolve -> relabel -> pyramid) into one OME-Zarr volume.

Its result must be the single-task stitch's, object for object (and id for id: both number
the objects the same way), written with chunks that never straddle two tiles' cores.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr
from test_model_stitch import fake_inference, planned, same_objects  # noqa: F401 (fixture)

from hpcffn.core.errors import HpcffnError
from hpcffn.io import ome_zarr
from hpcffn.stages import joins, pyramid, relabel, resolve
from hpcffn.stages import stitch as single


def run_steps(plan, log=lambda s: None) -> None:
    """Every task of the planned stitch jobs, in plan order (what submit would run)."""
    modules = {"joins": joins, "resolve": resolve, "relabel": relabel, "pyramid": pyramid}
    for job in plan.jobs:
        if job.stage in modules:
            for unit in reversed(job.units):  # any order within a job must do
                modules[job.stage].run_from_plan(plan, unit, log=log)


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
    size = tuple(plan.spec["subvolume"]["size"])
    chunks = ome_zarr.chunk_shape(size, plan.volumes[0].shape)
    for t in plan.tiles:
        assert all(s % c == 0 for s, c in zip(t.box.start, chunks))
        stop = [s + n for s, n in zip(t.box.start, t.box.size)]
        assert all(e % c == 0 or e == d for e, c, d in zip(stop, chunks, plan.volumes[0].shape))
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
