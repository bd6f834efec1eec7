"""The three data stages from a hand-made plan (what rendered jobs call) and the CLI."""

import subprocess

import h5py
import numpy as np
import pytest
import tifffile
from test_data_coordinates import read_records

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import CoordinateParams, FFNParams, PartitionParams
from hpcffn.core.plan_model import (
    Box,
    GroupPlan,
    Plan,
    TilePlan,
    VolumePlan,
    write_plan,
)
from hpcffn.stages import convert, coordinates, partitions
from hpcffn.stages.partitions import compute_partitions

SHAPE = (12, 14, 24)  # z,y,x; two tiles split along x


def make_plan(tmp_path):
    rng = np.random.default_rng(0)
    gt = np.full(SHAPE, 255, np.uint8)
    gt[:, 1:6, 1:20] = 0
    gt[:, 8:13, 3:23] = 0
    gt[2:10, 2:4, 21:23] = 0  # small object
    raw = rng.integers(0, 256, SHAPE).astype(np.uint8)
    for name, vol in (("gt", gt), ("raw", raw)):
        (tmp_path / name).mkdir()
        for i, sl in enumerate(vol):
            tifffile.imwrite(tmp_path / name / f"{name}{i}.tif", sl)
    work = tmp_path / "work"
    conv = work / "data" / "v.h5"
    tiles = [
        TilePlan(name=f"v_z0_y0_x{j}", volume="v", index=(0, 0, j), box=Box(start=(0, 0, 12 * j), size=(12, 14, 12)),
                 infer_box=Box(start=(0, 0, 0), size=SHAPE), group="g0")
        for j in range(2)
    ]
    ffn = FFNParams(partitions=PartitionParams(lom_radius=(2, 2, 1), min_size=20),
                    coordinates=CoordinateParams(margin=(1, 1, 1), seed=4))
    plan = Plan(
        hpcffn_version="test", name="t", workdir=str(work), spec_file=str(tmp_path / "s.yaml"), spec={}, ffn=ffn,
        volumes=[VolumePlan(name="v", shape=SHAPE, raw=f"{conv}:raw", groundtruth=f"{conv}:stack",
                            raw_source=str(tmp_path / "raw"), groundtruth_source=str(tmp_path / "gt"),
                            polarity="white", needs_convert=True)],
        tiles=tiles, groups=[GroupPlan(name="g0", tiles=[t.name for t in tiles], voxels=int(np.prod(SHAPE)))], jobs=[],
    )
    write_plan(plan, work / "plan.json")
    return plan, raw, gt


def test_plan_mode_end_to_end(tmp_path):
    plan, raw, _gt = make_plan(tmp_path)
    info = convert.run_from_plan(plan, "0", progress=False)
    assert info["objects"] == 3
    with h5py.File(plan.layout.converted_volume("v")) as fh:
        np.testing.assert_array_equal(fh["raw"][...], raw)
        stack = fh["stack"][...]
    assert set(np.unique(stack)) == {0, 1, 2, 3}
    for t in plan.tiles:
        partitions.run_from_plan(plan, t.name)
        with h5py.File(plan.layout.partitions(t.name)) as fh:
            af = fh["af"][...]
            assert tuple(fh["af"].attrs["offset"]) == t.box.start
        want = compute_partitions(stack[t.box.slices], (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                  (2, 2, 1), 20)
        np.testing.assert_array_equal(af, want)
    summary = coordinates.run_from_plan(plan, 0, progress=False)
    recs = read_records(plan.layout.coordinates("g0"))
    assert len(recs) == summary["records"] > 0
    per = {}
    afs = {}
    for t in plan.tiles:
        with h5py.File(plan.layout.partitions(t.name)) as fh:
            afs[t.box.start[2]] = fh["af"][...]
    for (x, y, z), name in recs:
        assert name == "v"  # the volume's name: training reads the volume's raw/stack by it
        x0 = 12 * (x // 12)
        af = afs[x0]
        lz, ly, lx = z, y, x - x0
        assert 1 <= lz < 11 and 1 <= ly < 13 and 1 <= lx < 11  # margin inside each tile's file
        c = int(af[lz, ly, lx])
        assert c != 255
        per[c] = per.get(c, 0) + 1
    assert len(set(per.values())) == 1 and set(per) == {int(c) for c in summary["classes"]}
    for stage, unit in (("convert", "v"), ("partitions", "v_z0_y0_x1"), ("coordinates", "g0")):
        assert plan.layout.marker(stage, unit).is_file()


def hpcffn(*args):
    return subprocess.run(["hpcffn", *map(str, args)], capture_output=True, text=True, check=False)


def test_cli_plan_and_standalone(tmp_path):
    plan, _, _ = make_plan(tmp_path)
    pj = plan.layout.plan
    for args in (["stage", "convert", "--plan", pj, "--volume", "v"],
                 ["stage", "partitions", "--plan", pj, "--tile", "1"],
                 ["stage", "partitions", "--plan", pj, "--tile", "v_z0_y0_x0", "--min-size", "5"],
                 ["stage", "coordinates", "--plan", pj, "--group", "g0", "--max-records", "40"]):
        proc = hpcffn(*args)
        assert proc.returncode == 0, proc.stderr
    assert "class" in proc.stdout and "35 records" in proc.stdout and "5 per class" in proc.stdout
    stack = f"{plan.layout.converted_volume('v')}:stack"
    proc = hpcffn("stage", "partitions", "--input", stack, "--output", f"{tmp_path}/af.h5:af",
                  "--lom-radius", "1,1,1", "--thresholds", "0.5,0.9", "--min-size", "0",
                  "--exclusion-region", "3,3,3,1")
    assert proc.returncode == 0, proc.stderr
    proc = hpcffn("stage", "coordinates", "--input", f"v:{tmp_path}/af.h5:af", "--input", f"w:{tmp_path}/af.h5",
                  "--output", tmp_path / "c.tfrecord.gz", "--margin", "2,2,2", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    names = {n for _, n in read_records(tmp_path / "c.tfrecord.gz")}
    assert names == {"v", "w"}
    # Existing standalone outputs (possibly the user's own) are replaced only with --overwrite.
    for cmd in (["stage", "partitions", "--input", stack, "--output", f"{tmp_path}/af.h5:af", "--lom-radius", "1,1,1"],
                ["stage", "coordinates", "--input", f"v:{tmp_path}/af.h5:af", "--output", tmp_path / "c.tfrecord.gz",
                 "--margin", "2,2,2"]):
        proc = hpcffn(*cmd)
        assert proc.returncode == 2 and "already exists" in proc.stderr and "--overwrite" in proc.stderr
        assert names == {n for _, n in read_records(tmp_path / "c.tfrecord.gz")}
        proc = hpcffn(*cmd, "--overwrite")
        assert proc.returncode == 0, proc.stderr
    proc = hpcffn("convert", "--groundtruth", tmp_path / "gt", "--polarity", "white", "--output", tmp_path / "o.h5")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "args,words",
    [
        (["stage", "partitions", "--input", "{t}/nope.h5:stack", "--output", "{t}/af.h5"], ["does not exist"]),
        (["stage", "partitions", "--input", "{t}/gt", "--output", "{t}/af.h5", "--lom-radius", "1,1"], ["--lom-radius"]),
        (["stage", "partitions", "--input", "x.h5", "--output", "y.h5", "--thresholds", "0.9,0.1"], ["thresholds"]),
        (["stage", "coordinates", "--input", "{t}/af.h5", "--output", "{t}/c.gz"], ["name:path"]),
        (["stage", "partitions", "--plan", "{t}/work", "--tile", "7"], ["out of range"]),
        (["convert", "--raw", "{t}/raw", "--output", "{t}/o.h5", "--rescale", "bogus"], ["rescale"]),
        (["stage", "coordinates", "--plan", "{t}/work", "--group", "g0"], ["partitions of tile", "missing"]),
        (["convert", "--plan", "{t}/work", "--volume", "0", "--slab", "-1"], ["--slab"]),  # not ignored
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, words):
    make_plan(tmp_path)
    proc = hpcffn(*[a.format(t=tmp_path) for a in args])
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpcffn: error:"), proc.stderr
    for w in words:
        assert w in lines[0]


def test_array_index_is_position_in_job_units(tmp_path):
    """Task i of the partitions array is units[i] (tiles with a group), not plan.tiles[i]."""
    from hpcffn.core.plan_model import JobPlan

    plan, _, _ = make_plan(tmp_path)
    extra = TilePlan(name="w_z0_y0_x0", volume="v", index=(0, 0, 0), box=Box(start=(0, 0, 0), size=(1, 1, 1)),
                     infer_box=Box(start=(0, 0, 0), size=(1, 1, 1)), group=None)
    job = JobPlan(name="partitions", stage="partitions", script="jobs/partitions/partitions.sbatch", sha256="",
                  array=True, units=[t.name for t in plan.tiles])
    plan = plan.model_copy(update={"tiles": [extra, *plan.tiles], "jobs": [job]})
    convert.run_from_plan(plan, 0, progress=False)
    partitions.run_from_plan(plan, "1")
    assert plan.layout.marker("partitions", "v_z0_y0_x1").is_file()
    with pytest.raises(HpcffnError, match="out of range"):
        partitions.run_from_plan(plan, "2")
