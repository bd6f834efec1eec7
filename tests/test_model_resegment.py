"""Joins decided by one flood fill where two tiles' segments meet (ffn.stitch.resegment;
hpcffn/stages/resegment.py), with a 'model' that segments the bright voxels of the image, so
what a fill covers is known: each case is one the overlap's counts decide wrongly."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_model_stitch import fake_inference, planned  # noqa: F401 (fixture)

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import InferenceParams, ModelParams, StitchParams
from hpcffn.io.volumes import Location
from hpcffn.stages.infer import write_segmentation
from hpcffn.stages.resegment import Judge
from hpcffn.stages.stitch import TileSegmentation, stitch, stitch_files

MP = ModelParams(depth=2, fov_size=(9, 9, 9), deltas=(2, 2, 2), image_mean=0.0, image_stddev=1.0)
SHAPE = (20, 20, 60)
# Bodies (bright in the image) in y, one dark row between them; all span z 2..17 and every x.
A, B = slice(2, 9), slice(10, 17)


def bright_model(batch):
    """Object (logit 5) where the image is bright, else -5."""
    return np.where(batch[..., :1] > 0, 5.0, -5.0).astype(np.float32)


def dark_model(batch):
    """Sees no object anywhere: FFN accepts no fill."""
    return np.full(batch.shape[:-1] + (1,), -5.0, np.float32)


def tiles_of(tmp_path, left: np.ndarray, right: np.ndarray) -> list[TileSegmentation]:
    """Two tiles along x: infer boxes x 0..36 and 24..60 (overlap 12), cores split at x 30."""
    out = []
    for name, seg, x0, core in (("t", left, 0, (0, 30)), ("u", right, 24, (30, 60))):
        path = tmp_path / f"{name}.h5"
        write_segmentation(path, seg, (0, 0, x0))
        out.append(TileSegmentation(name, Location(path, "seg"), (0, 0, x0), seg.shape,
                                    (0, 0, core[0]), (SHAPE[0], SHAPE[1], core[1] - core[0])))
    return out


def image_file(tmp_path) -> Location:
    raw = np.zeros(SHAPE, np.uint8)
    raw[2:18, A] = raw[2:18, B] = 1
    with h5py.File(tmp_path / "raw.h5", "w") as f:
        f.create_dataset("raw", data=raw)
    return Location(tmp_path / "raw.h5", "raw")


def stitched(tmp_path, tiles, params: StitchParams, model=bright_model) -> tuple[np.ndarray, Judge | None]:
    judge = None
    if params.resegment:
        judge = Judge(image_file(tmp_path), SHAPE, lambda tile: model, MP, InferenceParams(min_segment_size=1), params)
    out = Location(tmp_path / f"out-{params.resegment}-{model.__name__}.h5", "seg")
    stitch(tiles, SHAPE, out, params, log=lambda s: None, judge=judge)
    with h5py.File(out.path) as f:
        return f["seg"][...], judge


def half(ids: list, x0: int, x1: int) -> np.ndarray:
    """A tile's segmentation of x0..x1: `ids` lists (y slice, id or (x of a split, id, id))."""
    seg = np.zeros((SHAPE[0], SHAPE[1], x1 - x0), np.uint64)
    for rows, ident in ids:
        if isinstance(ident, tuple):
            cut, first, second = ident
            seg[2:18, rows, :cut - x0], seg[2:18, rows, cut - x0:] = first, second
        else:
            seg[2:18, rows] = ident
    return seg


def test_a_body_one_tile_split_is_joined_whole(tmp_path):
    # Tile u split body A at x 33: 9 of the overlap's 12 columns in piece 7, 3 in piece 8.
    tiles = tiles_of(tmp_path, half([(A, 2), (B, 3)], 0, 36), half([(A, (33, 7, 8)), (B, 9)], 24, 60))
    counts, _ = stitched(tmp_path, tiles, StitchParams(resegment=False))
    assert len(np.unique(counts[2:18, A])) == 2  # larger: piece 8 stays split at the face
    judged, judge = stitched(tmp_path, tiles, StitchParams(resegment=True, resegment_radius=8))
    assert len(np.unique(judged[2:18, A])) == 1 and len(np.unique(judged[2:18, B])) == 1
    assert judged[5, 5, 0] != judged[5, 13, 0]
    assert judge.counts["at_once"] == 1 and judge.counts["filled"] >= 2 and judge.counts["fovs"] > 0


def test_a_merge_in_one_tile_does_not_spread(tmp_path):
    # Tile t holds A, B and the dark row between them as one segment; tile u has A and B apart.
    # Each shares half of t's segment where both tiles segmented: `larger` joins both, and u's A
    # and B become one object.
    tiles = tiles_of(tmp_path, half([(slice(2, 17), 1)], 0, 36), half([(A, 5), (B, 6)], 24, 60))
    counts, _ = stitched(tmp_path, tiles, StitchParams(resegment=False))
    assert counts[5, 5, 50] == counts[5, 13, 50]
    # Each fill covers about half of t's segment in its box (0.45 and 0.51 here).
    params = StitchParams(resegment=True, resegment_radius=8, resegment_coverage=0.6)
    judged, judge = stitched(tmp_path, tiles, params)
    assert judged[5, 5, 50] != judged[5, 13, 50]  # u's core keeps them apart
    assert judge.counts["filled"] == 2 and judge.counts["joined"] == 0


def test_a_fill_ffn_does_not_accept_leaves_the_decision_to_the_rule(tmp_path):
    tiles = tiles_of(tmp_path, half([(A, 2), (B, 3)], 0, 36), half([(A, (33, 7, 8)), (B, 9)], 24, 60))
    counts, _ = stitched(tmp_path, tiles, StitchParams(resegment=False))
    judged, judge = stitched(tmp_path, tiles, StitchParams(resegment=True, resegment_radius=8), model=dark_model)
    assert np.array_equal(judged, counts)
    assert judge.counts["not_accepted"] >= 2 and judge.counts["filled"] == 0


def test_standalone_stitch_refuses_resegment(tmp_path):
    with pytest.raises(HpcffnError, match="resegment needs the plan's image"):
        stitch_files([str(tmp_path / "a.h5")], str(tmp_path / "o.h5"), StitchParams(resegment=True))


def test_plan_json_keeps_its_bytes_at_the_defaults():
    """resegment (on, radius 24) is the default: default plans write none of it, turning it off is written."""
    assert StitchParams().resegment is True and StitchParams().resegment_radius == 24
    assert StitchParams().model_dump() == {"min_overlap_voxels": 100, "min_overlap_fraction": 0.5}
    assert StitchParams(resegment=False).model_dump()["resegment"] is False
    assert StitchParams(resegment_radius=40).model_dump()["resegment_radius"] == 40


def test_planned_joins_give_the_single_task_result_with_resegment(planned, tmp_path):  # noqa: F811
    """The joins tasks build their judge from the plan (its image, its checkpoint) and decide as
    the single-task stitch does; a body split in one tile makes uncertain pairs to fill."""
    import tensorflow as tf
    from test_model_stitch_volume import run_steps

    from hpcffn.ffn.model import build_model
    from hpcffn.io import ome_zarr
    from hpcffn.stages import stitch as single

    plan, labels = planned
    prefix = tf.train.Checkpoint(model=build_model(plan.ffn.model, seed=3), step=tf.Variable(1, dtype=tf.int64)).save(
        str(tmp_path / "ckpt"))
    ffn = plan.ffn.model_copy(update={"inference": plan.ffn.inference.model_copy(update={"checkpoint": prefix}),
                                      "stitch": StitchParams(resegment=True, resegment_radius=8)})
    plan = plan.model_copy(update={"ffn": ffn})
    fake_inference(plan, labels)
    tiles = single.plan_tiles(plan, "v1")
    start, size = single.intersection(tiles[0], tiles[1])  # tile 1 splits its largest object there
    path = plan.layout.segmentation(tiles[1].name)
    with h5py.File(path) as f:
        seg = f["seg"][...]
    shared = tuple(slice(a - b, a - b + n) for a, b, n in zip(start, tiles[1].start, size))
    ids, counts = np.unique(seg[shared][seg[shared] > 0], return_counts=True)
    part = seg[shared]
    axis = int(np.argmax(size))
    part[(part == ids[np.argmax(counts)]) & (np.indices(part.shape)[axis] < size[axis] // 3)] = seg.max() + 1
    write_segmentation(path, seg, tiles[1].start)
    logs = []
    single.run_from_plan(plan, "v1", ffn.stitch, log=logs.append)  # makes its own judge, as joins does
    run_steps(plan, ffn.stitch, log=logs.append)
    with h5py.File(plan.layout.stitched_hdf5("v1")) as f:
        expected = f["seg"][...]
    assert np.array_equal(ome_zarr.open_array(plan.layout.stitched("v1"), "seg", mode="r")[...], expected)
    def fills(line):  # "... N judged by a fill (F FOVs), M fills not accepted ..."
        judged = int(line.split(" judged by a fill")[0].rsplit(" ", 1)[1])
        return judged + int(line.split(" fills not accepted")[0].rsplit(" ", 1)[1])

    assert sum(fills(line) for line in logs if "judged by a fill" in line) > 0  # the split's pairs got fills


def test_a_pair_is_filled_with_its_earlier_tiles_checkpoint(tmp_path):
    """Groups may train checkpoints of their own: a pair is judged by the model of the tile whose
    joins task compares it (the earlier in plan order), in the planned steps and the single task."""
    asked = []

    def predict_for(name):
        asked.append(name)
        return bright_model

    tiles = tiles_of(tmp_path, half([(A, 2), (B, 3)], 0, 36), half([(A, (33, 7, 8)), (B, 9)], 24, 60))
    params = StitchParams(resegment=True, resegment_radius=8)
    judge = Judge(image_file(tmp_path), SHAPE, predict_for, MP, InferenceParams(min_segment_size=1), params)
    stitch(tiles, SHAPE, Location(tmp_path / "o.h5", "seg"), params, log=lambda s: None, judge=judge)
    assert asked and set(asked) == {"t"}
