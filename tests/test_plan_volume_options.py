"""Per-volume convert options in the spec (rescale, connectivity) reach the convert stage."""

import subprocess

import h5py
import numpy as np
import tifffile
import yaml
from plan_helpers import spec_dict

from hpcffn.core.plan_model import load_plan
from hpcffn.stages import convert

SHAPE = (70, 70, 70)


def _write_slices(folder, volume):
    folder.mkdir(parents=True)
    for z, sl in enumerate(volume):
        tifffile.imwrite(folder / f"s{z}.tif", sl)


def _plan(tmp_path, **volume_options):
    raw = np.linspace(1000, 3000, num=np.prod(SHAPE)).reshape(SHAPE).astype(np.uint16)
    gt = np.full(SHAPE, 255, np.uint8)
    gt[10:30, 10:30, 10:30] = 0
    gt[30:50, 30:50, 30:50] = 0  # touches the first cube only along an edge line
    _write_slices(tmp_path / "raw", raw)
    _write_slices(tmp_path / "gt", gt)
    volume = {"name": "v1", "raw": "raw", "groundtruth": "gt", "polarity": "white", **volume_options}
    spec = spec_dict(volumes=[volume], subvolume={"size": [70, 70, 70], "groups": 1})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    subprocess.run(["hpcffn", "plan", str(path)], check=True, capture_output=True)
    return load_plan(tmp_path / "work")


def test_rescale_minmax_and_connectivity_from_spec(tmp_path):
    plan = _plan(tmp_path, rescale="minmax", connectivity=26)
    convert.run_from_plan(plan, "v1", progress=False)
    with h5py.File(plan.layout.converted_volume("v1")) as fh:
        raw = fh["raw"][...]
        stack = fh["stack"][...]
    assert raw.dtype == np.uint8 and raw.min() == 0 and raw.max() == 255
    # 26-connectivity joins the two cubes that meet at one corner voxel pair
    assert len(np.unique(stack[stack > 0])) == 1


def test_default_connectivity_keeps_corner_touching_objects_apart(tmp_path):
    plan = _plan(tmp_path, rescale="dtype")
    convert.run_from_plan(plan, "v1", progress=False)
    with h5py.File(plan.layout.converted_volume("v1")) as fh:
        stack = fh["stack"][...]
    assert len(np.unique(stack[stack > 0])) == 2


def test_non_uint8_raw_without_rescale_is_one_clear_error(tmp_path):
    _plan(tmp_path)
    proc = subprocess.run(["hpcffn", "stage", "convert", "--plan", str(tmp_path / "work"), "--volume", "v1"],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "rescale" in lines[0] and "Traceback" not in proc.stderr


def test_tile_files_hold_each_tiles_box(tmp_path):
    plan = _plan(tmp_path, rescale="dtype", tile_files=True)
    info = convert.run_from_plan(plan, "v1", progress=False)
    assert info["tile_files"] == len(plan.tiles) == 1
    tile = plan.tiles[0]
    with h5py.File(plan.layout.converted_volume("v1")) as whole, h5py.File(plan.layout.tile_file(tile.name)) as part:
        box = tile.box.slices
        np.testing.assert_array_equal(part["raw"][...], whole["raw"][box])
        np.testing.assert_array_equal(part["stack"][...], whole["stack"][box])
        assert tuple(part.attrs["volume_offset"]) == tile.box.start
        assert "offset" not in part["stack"].attrs  # FFN-style tools see the tile as its own volume


def test_tile_files_on_hdf5_read_in_place_warns(tmp_path):
    from plan_helpers import write_spec

    spec = spec_dict()
    spec["volumes"][0]["tile_files"] = True
    proc = subprocess.run(["hpcffn", "plan", str(write_spec(tmp_path, spec))], capture_output=True, text=True,
                          check=True)
    assert "volumes.0.tile_files" in proc.stdout + proc.stderr


def test_volume_mask_excludes_its_region_from_the_partitions(tmp_path):
    from hpcffn.stages import partitions

    mask = np.zeros(SHAPE, np.uint8)
    mask[15:20, 15:20, 15:20] = 1  # inside the first cube
    (tmp_path / "masks").mkdir()
    with h5py.File(tmp_path / "masks" / "m.h5", "w") as f:
        f.create_dataset("mask", data=mask)
    plan = _plan(tmp_path, mask="masks/m.h5", rescale="dtype")
    assert plan.volumes[0].mask == f"{tmp_path}/masks/m.h5:mask"
    convert.run_from_plan(plan, "v1", progress=False)
    partitions.run_from_plan(plan, 0, plan.ffn.partitions.model_copy(update={"lom_radius": (2, 2, 2), "min_size": 10}))
    with h5py.File(plan.layout.partitions(plan.tiles[0].name)) as f:
        af = f["af"][...]
    assert (af[13:22, 13:22, 13:22] == 255).all()  # the mask grown by the radius
    assert af[25, 25, 25] not in (0, 255) and af[40, 40, 40] not in (0, 255)


def test_volume_mask_must_be_hdf5_of_the_same_shape(tmp_path):
    import pytest

    (tmp_path / "masks").mkdir()
    with h5py.File(tmp_path / "masks" / "small.h5", "w") as f:
        f.create_dataset("mask", data=np.zeros((10, 70, 70), np.uint8))
    for value, needle in (("masks/small.h5", "volumes.0.mask: shape (10, 70, 70) differs from the raw shape"),
                          ("masks", "volumes.0.mask: must be HDF5")):
        with pytest.raises(subprocess.CalledProcessError) as err:
            _plan(tmp_path / value.replace("/", "_"), mask=f"../{value}")
        assert needle in err.value.stderr.decode(), err.value.stderr


def test_the_mask_folder_is_bound_into_the_container(tmp_path):
    from plan_helpers import write_h5, write_spec

    from hpcffn.plan.planner import make_plan

    write_h5(tmp_path / "elsewhere" / "m.h5", datasets=("mask",))
    spec = spec_dict(container={"runtime": "apptainer", "image": "/images/hpcffn.sif"})
    spec["volumes"][0]["mask"] = str(tmp_path / "elsewhere" / "m.h5")
    planned = make_plan(write_spec(tmp_path, spec))
    binds = next(line for line in planned.scripts["jobs/partitions/partitions.sbatch"].splitlines()
                 if line.startswith("BINDS="))
    assert str(tmp_path / "elsewhere") in binds
