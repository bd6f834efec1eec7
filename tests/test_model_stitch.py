"""Stitching the tiles' segmentations of a volume into one (hpcffn/stages/stitch.py).

Tile segmentations here are made from groundtruth with ids renumbered per tile, the way
independent inference jobs number them; stitching must give back the groundtruth's objects.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
from plan_helpers import spec_dict, write_spec

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import StitchParams
from hpcffn.ffn import synthetic
from hpcffn.io.volumes import Location
from hpcffn.plan.planner import make_plan
from hpcffn.plan.render import write_workdir
from hpcffn.stages.infer import write_segmentation
from hpcffn.stages.stitch import (
    TileSegmentation,
    agreeing_pairs,
    grid_cores,
    owner_pairs,
    run_from_plan,
)

HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def renumbered(labels: np.ndarray, seed: int) -> np.ndarray:
    """The same objects under new, shuffled ids 1..K (what an independent infer job would write)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    new = np.random.default_rng(seed).permutation(len(ids)).astype(np.uint64) + 1
    new[ids == 0] = 0
    return new[inverse].reshape(labels.shape)


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b label the same voxel sets (ids may differ), with 0 in the same places."""
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]], axis=1), axis=0)
    return len(pairs) == len(np.unique(pairs[:, 0])) == len(np.unique(pairs[:, 1]))


@pytest.fixture
def planned(tmp_path):
    """A real plan (100 x 130 x 70, tiles 64^3 + 8 overlap: 4 tiles of 4 sizes) over labelled balls.

    Its checkpoint does not exist (inference is faked), so it joins by the overlap's counts alone
    (resegment off); test_model_resegment.py gives it a checkpoint to fill with."""
    ffn = {**spec_dict()["ffn"], "inference": {"checkpoint": "model/ckpt-1"}, "stitch": {"resegment": False}}
    spec = write_spec(tmp_path, spec_dict(stages=["infer", "stitch"], ffn=ffn))
    _, labels = synthetic.balls_volume((100, 130, 70), radius=(8, 16), gap=2, seed=5)
    with h5py.File(tmp_path / "data" / "v1.h5", "a") as f:
        del f["stack"]
        f.create_dataset("stack", data=labels)
    p = make_plan(spec)
    write_workdir(p.plan, p.scripts, p.resolved_yaml, force=False, dry_run=False)
    return p.plan, labels


def fake_inference(plan, labels) -> None:
    for i, t in enumerate(plan.tiles):
        write_segmentation(plan.layout.segmentation(t.name), renumbered(labels[t.infer_box.slices], seed=i),
                           t.infer_box.start)


def gappy_inference(plan, labels) -> tuple[np.ndarray, np.ndarray]:
    """fake_inference, but the first tile left boxes of its core unsegmented (as FFN does near a
    tile's faces) that its neighbours segmented, and the second one box filled from the first.

    Returns the volumes expected with fill_gaps and without. In the first tile's core: `joined`
    (the next tile holds the groundtruth there: filled with the joined objects), `new` (the next
    tile holds a segment of its own there, joined to nothing: a new object) and, in the corner all
    four infer boxes reach, `first` and `second`: the next tile holds another new segment on
    `first` and 0 on `second`, the tile after it one more new segment on both. The first covering
    neighbour that segmented a voxel fills it: `first` and `second` become two objects (32 and 64
    voxels: below min_overlap_voxels, so none of these joins).
    """
    t0, t1, t2, _ = plan.tiles
    assert (t1.box.start[1], t2.box.start[0]) == (64, 64)  # t1 beside t0 in y, t2 beside it in z
    segs = [renumbered(labels[t.infer_box.slices], seed=i) for i, t in enumerate(plan.tiles)]
    joined, new = ((10, 20), (58, 64), (10, 30)), ((30, 34), (60, 64), (40, 50))
    first, second = ((58, 62), (58, 62), (60, 62)), ((58, 62), (58, 62), (62, 64))
    earlier = ((40, 50), (64, 70), (5, 25))  # in t1's core, filled from t0 (before it in plan order)

    def at(box, tile=None):  # the box in the tile's array (or the volume)
        return tuple(slice(a - s, b - s) for (a, b), s in zip(box, tile.infer_box.start if tile else (0, 0, 0)))

    fresh = [int(max(s.max() for s in segs)) + k for k in (1, 2, 3)]
    for box in (joined, new, first, second):
        segs[0][at(box, t0)] = 0
    segs[1][at(earlier, t1)] = 0
    segs[1][at(new, t1)], segs[1][at(first, t1)], segs[1][at(second, t1)] = fresh[0], fresh[1], 0
    segs[2][at(first, t2)] = segs[2][at(second, t2)] = fresh[2]
    for t, seg in zip(plan.tiles, segs):
        write_segmentation(plan.layout.segmentation(t.name), seg, t.infer_box.start)
    filled, unfilled = labels.astype(np.uint64), labels.astype(np.uint64)
    for box, k in ((new, 1), (first, 2), (second, 3)):
        filled[at(box)] = int(labels.max()) + k
    for box in (joined, new, first, second, earlier):
        unfilled[at(box)] = 0
    return filled, unfilled


def test_plan_has_the_stitch_steps_after_infer(planned):
    plan, _ = planned
    infers = [j.name for j in plan.jobs if j.stage == "infer"]  # one infer array per group
    assert [(j.name, j.stage, [d.job for d in j.depends_on]) for j in plan.jobs if j.stage != "infer"] == [
        ("joins", "joins", infers), ("resolve", "resolve", ["joins"]), ("relabel", "relabel", ["resolve"]),
        ("pyramid_s1", "pyramid", ["relabel"]), ("pyramid_s2", "pyramid", ["pyramid_s1"])]
    assert plan.job("resolve").units == ["v1"] and plan.job("joins").units == [t.name for t in plan.tiles]
    commands = {"joins": '"${HPCFFN[@]}" stage joins --plan "$PLAN" --tile "$TASK"',
                "resolve": '"${HPCFFN[@]}" stage resolve --plan "$PLAN" --volume "$TASK"',
                "relabel": '"${HPCFFN[@]}" stage relabel --plan "$PLAN" --tile "$TASK"',
                "pyramid_s2": '"${HPCFFN[@]}" stage pyramid --plan "$PLAN" --job pyramid_s2 --block "$TASK"'}
    for name, line in commands.items():
        script = plan.layout.root / plan.job(name).script
        assert line in script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("rule", ["larger", "smaller", "owner"])
def test_stitched_tiles_give_back_the_objects(planned, monkeypatch, rule):
    import hpcffn.stages.stitch as stitch_mod

    monkeypatch.setattr(stitch_mod, "SLAB_VOXELS", 5 * 74 * 70)  # tiles are read 5 slices at a time
    plan, labels = planned
    assert len(plan.tiles) == 4 and len({t.box.size for t in plan.tiles}) == 4  # a 2 x 2 grid in z, y
    fake_inference(plan, labels)
    summary = run_from_plan(plan, "v1", StitchParams(fraction_of=rule, resegment=False), log=lambda s: None)
    with h5py.File(plan.layout.stitched_hdf5("v1")) as f:
        seg = f["seg"][...]
        assert tuple(f["seg"].attrs["offset"]) == (0, 0, 0)
    assert seg.shape == labels.shape and seg.dtype == np.uint64
    assert same_objects(seg, labels)
    objects = len(np.unique(labels)) - 1
    assert summary["segments"] == objects == seg.max()  # numbered 1..K
    assert summary["joins"] > 0 and summary["tile_segments"] > objects  # objects did cross tiles
    assert plan.layout.marker("stitch", "v1").is_file()


def test_a_tiles_gaps_take_the_segment_of_the_first_neighbour_that_segmented_them(planned):
    plan, labels = planned
    filled, unfilled = gappy_inference(plan, labels)
    for params, expected in ((StitchParams(resegment=False), filled),
                             (StitchParams(resegment=False, fill_gaps=False), unfilled)):
        summary = run_from_plan(plan, "v1", params, log=lambda s: None)
        with h5py.File(plan.layout.stitched_hdf5("v1")) as f:
            seg = f["seg"][...]
        assert same_objects(seg, expected)
        # The new segments own voxels only through the fills, and are numbered: K stays exact.
        assert summary["segments"] == len(np.unique(expected)) - 1 == seg.max()
    assert len(np.unique(filled)) == len(np.unique(unfilled)) + 3


def test_missing_or_foreign_tile_segmentation_is_one_clear_error(planned):
    plan, labels = planned
    fake_inference(plan, labels)
    last = plan.tiles[-1]
    plan.layout.segmentation(last.name).unlink()
    with pytest.raises(HpcffnError, match=f"tile {last.name} has no segmentation .*run its infer task"):
        run_from_plan(plan, "v1", log=lambda s: None)
    write_segmentation(plan.layout.segmentation(last.name), np.zeros((4, 4, 4), np.uint64), (0, 0, 0))
    with pytest.raises(HpcffnError, match="from another plan"):
        run_from_plan(plan, "v1", log=lambda s: None)
    assert not plan.layout.stitched_hdf5("v1").exists()


def test_a_merge_in_one_tile_does_not_spread_into_its_neighbour():
    # In the shared region tile A holds objects 1 and 2 as one segment (7); tile B has them apart.
    a = np.full((4, 10, 10), 7, np.uint64)
    b = np.ones((4, 10, 10), np.uint64)
    b[:, :, 7:] = 2  # object 2: 30% of the region
    b[:, 0, 0] = 3  # a speck that touches A's segment
    pairs = agreeing_pairs(a, b, StitchParams(min_overlap_voxels=10, min_overlap_fraction=0.5))
    assert pairs.tolist() == [[7, 1]]  # joined with the object it mostly is, not with 2 or 3
    assert agreeing_pairs(a, b, StitchParams(min_overlap_voxels=1000)).shape == (0, 2)
    assert agreeing_pairs(a, np.zeros_like(b), StitchParams()).shape == (0, 2)


def test_what_one_tile_left_unsegmented_does_not_block_a_join():
    # Tile B segmented only 40% of the shared region (near its face a tile segments less);
    # where both segmented, B's segment is A's object: one object, not a split at the face.
    a = np.full((4, 10, 10), 7, np.uint64)
    b = np.zeros((4, 10, 10), np.uint64)
    b[:, :, :4] = 1
    assert agreeing_pairs(a, b, StitchParams(min_overlap_voxels=10, min_overlap_fraction=0.5)).tolist() == [[7, 1]]
    # ...and a merge in A still joins only the neighbour's object it mostly is.
    b[:, :, 4:5] = 2
    assert agreeing_pairs(a, b, StitchParams(min_overlap_voxels=10, min_overlap_fraction=0.5)).tolist() == [[7, 1]]


def test_fraction_of_smaller_joins_every_piece_of_a_body_one_tile_split():
    # Tile B holds one body as segment 1; tile A split it into 7 (70%) and 8 (30%). As FIB-25's
    # tiles do near faces (docs/real_data.md): with `larger` only 7 joins and 8 stays a split
    # at the face; with `smaller` both join (and so would two objects B had merged: its cost).
    a = np.full((4, 10, 10), 7, np.uint64)
    a[:, :, 7:] = 8
    b = np.ones((4, 10, 10), np.uint64)
    larger = StitchParams(min_overlap_voxels=10, min_overlap_fraction=0.5)
    assert agreeing_pairs(a, b, larger).tolist() == [[7, 1]]
    smaller = StitchParams(min_overlap_voxels=10, min_overlap_fraction=0.9, fraction_of="smaller")
    assert agreeing_pairs(a, b, smaller).tolist() == [[7, 1], [8, 1]]
    b[:, 5:, :] = 2  # B cuts across both of A's pieces: none lies 90% inside the other's: no join
    assert agreeing_pairs(a, b, smaller).shape == (0, 2)


def _two_tiles_sharing_x_0_to_20():
    """Tiles t (owns x < 10) and u (owns x >= 10) whose infer boxes share z 0..4, y 0..10, x 0..20."""
    t = TileSegmentation("t", Location("t.h5", "seg"), (0, 0, -20), (4, 10, 40), (0, 0, -20), (4, 10, 30))
    u = TileSegmentation("u", Location("u.h5", "seg"), (0, 0, 0), (4, 10, 40), (0, 0, 10), (4, 10, 30))
    return t, u, ((0, 0, 0), (4, 10, 20))


def test_fraction_of_owner_lets_the_tile_that_owns_the_voxels_decide():
    t, u, box = _two_tiles_sharing_x_0_to_20()
    owner = StitchParams(min_overlap_voxels=10, min_overlap_fraction=0.5, fraction_of="owner")
    # t split off a piece (8) of a body near its face, in u's part, where u holds the body whole
    # (1): both of t's pieces join it (`larger` joins only the larger piece).
    a = np.full((4, 10, 20), 7, np.uint64)
    a[:, :, 14:] = 8
    b = np.ones((4, 10, 20), np.uint64)
    assert owner_pairs(t, u, box, a, b, owner).tolist() == [[7, 1], [8, 1]]
    assert agreeing_pairs(a, b, StitchParams(min_overlap_voxels=10)).tolist() == [[7, 1]]
    # t merged two bodies (1: y < 7, 2: y >= 7) into 7, but only in u's part; in its own part it
    # keeps them apart (7, 9). u decides there: the merge does not spread across the face.
    a = np.full((4, 10, 20), 7, np.uint64)
    a[:, 7:, :10] = 9
    b = np.ones((4, 10, 20), np.uint64)
    b[:, 7:, :] = 2
    assert owner_pairs(t, u, box, a, b, owner).tolist() == [[7, 1], [9, 2]]
    # t merges them in its own part too: there t decides, and the stitched volume shows its merge.
    a[:, 7:, :10] = 7
    assert owner_pairs(t, u, box, a, b, owner).tolist() == [[7, 1], [7, 2]]
    # Nothing segmented by both, or below min_overlap_voxels: no join.
    assert owner_pairs(t, u, box, a, np.zeros_like(b), owner).shape == (0, 2)
    assert owner_pairs(t, u, box, a, b, owner.model_copy(update={"min_overlap_voxels": 10**6})).shape == (0, 2)


def test_grid_cores_split_overlaps_in_the_middle():
    boxes = [((0, 0, 0), (10, 10, 40)), ((0, 0, 32), (10, 10, 40)), ((0, 0, 64), (10, 10, 16))]
    cores = grid_cores(boxes, ["a", "b", "c"])
    assert cores == [((0, 0, 0), (10, 10, 36)), ((0, 0, 36), (10, 10, 32)), ((0, 0, 68), (10, 10, 12))]
    with pytest.raises(HpcffnError, match="gap along axis x between 40 and 50"):
        grid_cores([((0, 0, 0), (10, 10, 40)), ((0, 0, 50), (10, 10, 40))], ["a", "b"])


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_standalone_cli_stitches_files_with_offsets(tmp_path):
    _, labels = synthetic.balls_volume((24, 30, 60), radius=(4, 8), gap=2, seed=2)
    files = []
    for i, (x0, x1) in enumerate(((0, 36), (28, 60))):  # 8 voxels of overlap along x
        path = tmp_path / f"t{i}.h5"
        write_segmentation(path, renumbered(labels[:, :, x0:x1], seed=i), (0, 0, x0))
        files += ["--segmentation", str(path)]
    out = tmp_path / "whole.h5"
    proc = subprocess.run([*HPCFFN, "stage", "stitch", *files, "--output", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "joins across tile overlaps" in proc.stdout
    with h5py.File(out) as f:
        assert same_objects(f["seg"][...], labels)
    again = subprocess.run([*HPCFFN, "stage", "stitch", *files, "--output", str(out)],
                           capture_output=True, text=True, check=False)
    assert "already exists" in _one_line_error(again)
    bad = subprocess.run([*HPCFFN, "stage", "stitch", *files, "--output", str(tmp_path / "x.h5"), "--shape", "20,30"],
                         capture_output=True, text=True, check=False)
    assert "--shape" in _one_line_error(bad)
    none = subprocess.run([*HPCFFN, "stage", "stitch"], capture_output=True, text=True, check=False)
    assert "--segmentation" in _one_line_error(none)


def test_plan_mode_cli_as_the_stitch_array_task_calls_it(planned):
    plan, labels = planned
    fake_inference(plan, labels)
    proc = subprocess.run([*HPCFFN, "stage", "stitch", "--plan", str(plan.layout.plan), "--volume", "0",
                           "--min-overlap-fraction", "0.9"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"segments in {plan.layout.stitched_hdf5('v1')}:seg" in proc.stdout
    with h5py.File(plan.layout.stitched_hdf5("v1")) as f:
        assert same_objects(f["seg"][...], labels)
    bad = subprocess.run([*HPCFFN, "stage", "stitch", "--plan", str(plan.layout.plan), "--volume", "0",
                          "--min-overlap-fraction", "2"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "ffn.stitch.min_overlap_fraction" in bad.stderr and "Traceback" not in bad.stderr


def test_join_rule_in_plan_json_larger_left_out_others_written(tmp_path):
    import json

    from hpcffn.core.plan_model import load_plan

    for rule in ("larger", "owner"):
        ffn = {**spec_dict()["ffn"], "inference": {"checkpoint": "model/ckpt-1"}}
        if rule != "larger":
            ffn["stitch"] = {"fraction_of": rule}
        spec = write_spec(tmp_path / rule, spec_dict(stages=["infer", "stitch"], ffn=ffn))
        p = make_plan(spec)
        write_workdir(p.plan, p.scripts, p.resolved_yaml, force=False, dry_run=False)
        written = json.loads(p.plan.layout.plan.read_text())["ffn"]["stitch"]
        assert written.get("fraction_of") == (None if rule == "larger" else rule)  # default: plans keep their bytes
        assert load_plan(p.plan.layout.plan).ffn.stitch.fraction_of == rule


def test_fill_gaps_off_is_written_and_changes_the_stitch_fingerprints_only(tmp_path):
    import json

    from hpcffn.core.plan_model import load_plan
    from hpcffn.plan.fingerprints import unit_fingerprints

    plans = {}
    for fill in (True, False):  # the same spec file, so only ffn.stitch differs
        ffn = {**spec_dict()["ffn"], "inference": {"checkpoint": "model/ckpt-1"}}
        if not fill:
            ffn["stitch"] = {"fill_gaps": False}
        spec = write_spec(tmp_path, spec_dict(stages=["infer", "stitch"], ffn=ffn), data=fill)  # one input file
        plans[fill] = make_plan(spec)
    p = plans[False]
    write_workdir(p.plan, p.scripts, p.resolved_yaml, force=False, dry_run=False)
    assert json.loads(p.plan.layout.plan.read_text())["ffn"]["stitch"]["fill_gaps"] is False
    assert load_plan(p.plan.layout.plan).ffn.stitch.fill_gaps is False
    assert "fill_gaps" not in plans[True].plan.model_dump(mode="json")["ffn"]["stitch"]  # default: plans keep their bytes
    on, off = (unit_fingerprints(plans[f].plan) for f in (True, False))
    assert on.keys() == off.keys()
    for job in on:
        stage = plans[True].plan.job(job).stage
        assert (on[job] != off[job]) == (stage in ("joins", "resolve", "relabel", "pyramid", "evaluate")), job


def test_standalone_stitch_fills_gaps_unless_told_not_to(tmp_path):
    from hpcffn.stages.stitch import stitch_files

    a = np.ones((4, 10, 40), np.uint64)
    a[:, :, 30:] = 0  # a (x 0..40, owns x < 36) left x >= 30 unsegmented; b (x 32..72) covers x >= 32
    write_segmentation(tmp_path / "a.h5", a, (0, 0, 0))
    write_segmentation(tmp_path / "b.h5", np.full((4, 10, 40), 5, np.uint64), (0, 0, 32))
    files = [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    summary = stitch_files(files, str(tmp_path / "on.h5"), StitchParams(resegment=False), log=lambda s: None)
    assert summary["joins"] == 0 and summary["segments"] == 2  # nothing both segmented: no join
    proc = subprocess.run([*HPCFFN, "stage", "stitch", "--segmentation", files[0], "--segmentation", files[1],
                           "--output", str(tmp_path / "off.h5"), "--no-fill-gaps"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for name in ("on", "off"):
        with h5py.File(tmp_path / f"{name}.h5") as f:
            rows[name] = f["seg"][0, 0, 28:40].tolist()
    assert rows == {"on": [1, 1, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2], "off": [1, 1, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2]}
