"""Spec loading and input checks: every mistake is one line naming the file, field and fix."""

from __future__ import annotations

import pytest
from plan_helpers import SHAPE, spec_dict, write_h5, write_spec, write_tif_dir

from hpcffn.core.errors import HpcffnError
from hpcffn.plan.planner import make_plan


def plan_error(tmp_path, spec, data=True) -> str:
    path = write_spec(tmp_path, spec, data=data)
    with pytest.raises(HpcffnError) as info:
        make_plan(path)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_base_spec_plans(tmp_path):
    planned = make_plan(write_spec(tmp_path))
    assert planned.plan.volumes[0].shape == SHAPE
    assert planned.plan.volumes[0].needs_convert is False  # HDF5 labels are read as they are
    assert planned.plan.volumes[0].raw == f"{tmp_path}/data/v1.h5:raw"


def test_unknown_key_lists_allowed_keys(tmp_path):
    spec = spec_dict(subvolume={"size": [64, 64, 64], "grups": 2})
    msg = plan_error(tmp_path, spec)
    assert "exp.yaml" in msg and "subvolume.grups" in msg and "unknown key" in msg
    assert "groups" in msg and "overlap" in msg


def test_unknown_key_in_list_item(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5", "grondtruth": "x"}])
    msg = plan_error(tmp_path, spec)
    assert "volumes.0.grondtruth" in msg and "groundtruth" in msg


def test_wrong_type_names_field(tmp_path):
    msg = plan_error(tmp_path, spec_dict(subvolume={"size": "big"}))
    assert "field subvolume.size" in msg and "'big'" in msg


def test_missing_file_says_declare_shape(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/nothere.h5"}])
    msg = plan_error(tmp_path, spec, data=False)
    assert "volumes.0.raw" in msg and "nothere.h5 does not exist" in msg and "volumes.0.shape" in msg


def test_declared_shape_plans_without_data(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "gone/raw_tifs", "groundtruth": "gone/gt_tifs",
                               "polarity": "white", "shape": [128, 128, 128]}])
    planned = make_plan(write_spec(tmp_path, spec, data=False))
    assert len(planned.plan.tiles) == 8
    assert any("does not exist yet" in w for w in planned.warnings)


def test_wrong_dataset_lists_existing(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5:grayscale"}])
    msg = plan_error(tmp_path, spec)
    assert "volumes.0.raw" in msg and "'grayscale'" in msg and "raw, stack" in msg


def test_declared_shape_must_match_file(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5", "shape": [1, 2, 3]}])
    msg = plan_error(tmp_path, spec)
    assert "volumes.0.shape" in msg and str(SHAPE) in msg


def test_groundtruth_shape_must_match_raw(tmp_path):
    write_h5(tmp_path / "data" / "gt.h5", shape=(100, 130, 71), datasets=("stack",))
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5", "groundtruth": "data/gt.h5"}])
    msg = plan_error(tmp_path, spec)
    assert "volumes.0.groundtruth" in msg and "differs" in msg


def test_fov_larger_than_subvolume(tmp_path):
    spec = spec_dict(ffn={"model": {"fov_size": [33, 33, 33], "deltas": [8, 8, 8]}, "coordinates": {"margin": [24, 24, 24]}})
    msg = plan_error(tmp_path, spec)
    assert "subvolume.size" in msg and "fov_size" in msg and "(81, 81, 81)" in msg


def test_inference_only_plan_may_use_tiles_smaller_than_fov_plus_margins(tmp_path):
    # FOV 33 + 2 x margin 24 = 81 binds only where training examples are cut (coordinates, train).
    ffn = {"model": {"fov_size": [33, 33, 33], "deltas": [8, 8, 8]}, "coordinates": {"margin": [24, 24, 24]},
           "inference": {"checkpoint": "model/ckpt-100"}}
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5"}], ffn=ffn)
    plan = make_plan(write_spec(tmp_path, spec)).plan
    assert (64, 64, 70) in {t.box.size for t in plan.tiles} and "train" not in plan.spec.stages
    assert min(min(t.box.size) for t in plan.tiles) >= 33  # remainders still hold one FOV
    trained = spec_dict(ffn=ffn)
    assert "(81, 81, 81)" in plan_error(tmp_path / "train", trained)
    trained["stages"] = ["infer"]  # groundtruth present but nothing trained here: small tiles are fine
    assert make_plan(write_spec(tmp_path / "infer", trained)).plan.tiles


def test_margin_must_hold_fov_radius_and_deltas(tmp_path):
    spec = spec_dict(ffn={"model": {"fov_size": [9, 9, 9], "deltas": [2, 2, 2]}, "coordinates": {"margin": [6, 5, 6]}})
    msg = plan_error(tmp_path, spec)
    assert "ffn.coordinates.margin" in msg


def test_small_min_edge_leaves_too_small_tile(tmp_path):
    spec = spec_dict(subvolume={"size": [64, 64, 64], "min_edge": [1, 1, 1], "groups": 2})
    msg = plan_error(tmp_path, spec)
    assert "subvolume.min_edge" in msg and "v1_z0_y0_x1" in msg  # x: 70 = 64 + 6


def test_more_groups_than_training_tiles(tmp_path):
    msg = plan_error(tmp_path, spec_dict(subvolume={"size": [64, 64, 64], "groups": 7}))
    assert "subvolume.groups" in msg and "4 training tiles" in msg


@pytest.mark.parametrize("name", ["bad name", "-x", "a;rm -rf ~", "$(id)", "é"])
def test_experiment_name_rejected(tmp_path, name):
    msg = plan_error(tmp_path, spec_dict(name=name))
    assert "field name" in msg


def test_volume_names_unique(tmp_path):
    vol = {"name": "v1", "raw": "data/v1.h5"}
    msg = plan_error(tmp_path, spec_dict(volumes=[vol, vol]))
    assert "used twice" in msg


def test_all_digit_volume_name_refused(tmp_path):
    # Array tasks pass unit positions as numbers: plan.volume("1") must never find another volume.
    msg = plan_error(tmp_path, spec_dict(volumes=[{"name": "1", "raw": "data/v1.h5"}]))
    assert "volumes.0.name" in msg and "all digits" in msg


@pytest.mark.parametrize("line,hint", [
    ("--array=0-3", "array_throttle"),
    ("#SBATCH --output=x.log", "workdir"),
    ("-d afterok:1", "submit"),
    ("--time=1:00:00", "cluster.<stage>.time"),
    ("--signal=USR2@60", "signal_grace"),
])
def test_extra_sbatch_cannot_override_managed_keys(tmp_path, line, hint):
    msg = plan_error(tmp_path, spec_dict(cluster={"profile": "local", "train": {"extra_sbatch": [line]}}))
    assert "cluster.train.extra_sbatch" in msg and hint in msg


@pytest.mark.parametrize("line", ["--comment=$(touch x)", "--exclusive; rm -rf ~", "--x='a b'"])
def test_extra_sbatch_rejects_shell(tmp_path, line):
    msg = plan_error(tmp_path, spec_dict(cluster={"profile": "local", "defaults": {"extra_sbatch": [line]}}))
    assert "extra_sbatch" in msg


@pytest.mark.parametrize("field,value", [("time", "5 days"), ("memory", "lots"), ("partition", "a b"),
                                         ("mail_type", "SOMETIMES"), ("constraint", "$(id)")])
def test_resource_values_checked(tmp_path, field, value):
    msg = plan_error(tmp_path, spec_dict(cluster={"profile": "local", "train": {field: value}}))
    assert f"cluster.train.{field}" in msg


def test_unquoted_time_read_as_number_says_quote_it(tmp_path):
    # `time: 12:00:00` unquoted is the YAML 1.1 base-60 integer 43200.
    msg = plan_error(tmp_path, spec_dict(cluster={"profile": "local", "train": {"time": 43200}}))
    assert "cluster.train.time" in msg and 'time: "12:00:00"' in msg
    msg = plan_error(tmp_path, spec_dict(cluster={"profile": "local", "train": {"memory": 64}}))
    assert "cluster.train.memory" in msg and "memory: 64G" in msg


def test_key_given_twice_is_refused_not_silently_replaced(tmp_path):
    path = write_spec(tmp_path, spec_dict(cluster={"profile": "local", "train": {"time": "1:00:00"}}))
    path.write_text(path.read_text() + "name: other\n")
    with pytest.raises(HpcffnError) as info:
        make_plan(path)
    assert "key 'name' given twice" in str(info.value) and "line " in str(info.value)
    # A key given by a merge (<<: *anchor) may still be overridden.
    path = write_spec(tmp_path, spec_dict(cluster=None))
    path.write_text(path.read_text() + "cluster:\n  profile: local\n  defaults: &d {time: '1:00:00', cpus: 2}\n"
                    "  train:\n    <<: *d\n    time: '2:00:00'\n")
    train = make_plan(path).scripts["jobs/train/train_g0.sbatch"]
    assert "#SBATCH --time=2:00:00\n" in train and "#SBATCH --cpus-per-task=2\n" in train


def test_unknown_profile_lists_shipped(tmp_path):
    msg = plan_error(tmp_path, spec_dict(cluster={"profile": "summit"}))
    assert "cluster.profile" in msg and "ibex" in msg and "generic" in msg


def test_apptainer_needs_image(tmp_path):
    msg = plan_error(tmp_path, spec_dict(container={"runtime": "apptainer"}))
    assert "container.image" in msg and "runtime: none" in msg


def test_workdir_with_space_rejected(tmp_path):
    msg = plan_error(tmp_path, spec_dict(workdir="my work"))
    assert "field workdir" in msg


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: a\nvolumes: [\n  - x\n")
    with pytest.raises(HpcffnError, match=r"exp.yaml: line \d+"):
        make_plan(path)


def test_train_without_groundtruth_is_an_error(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5"}], stages=["train"])
    msg = plan_error(tmp_path, spec)
    assert "field stages" in msg and "groundtruth" in msg


def test_infer_only_needs_checkpoint(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5"}])
    msg = plan_error(tmp_path, spec)
    assert "ffn.inference.checkpoint" in msg
    spec["ffn"]["inference"] = {"checkpoint": "model/ckpt-100"}
    plan = make_plan(write_spec(tmp_path, spec)).plan
    assert [j.name for j in plan.jobs] == ["infer", "joins", "resolve", "relabel", "pyramid_s1", "pyramid_s2"]
    assert plan.ffn.inference.checkpoint == f"{tmp_path}/model/ckpt-100"


def test_tif_inputs_are_converted_and_shapes_read(tmp_path):
    write_tif_dir(tmp_path / "raw", shape=(30, 40, 50))
    import numpy as np
    import tifffile

    tifffile.imwrite(tmp_path / "gt.tif", np.zeros((30, 40, 50), np.uint8))
    spec = spec_dict(volumes=[{"name": "v1", "raw": "raw", "groundtruth": "gt.tif"}],
                     subvolume={"size": [64, 64, 64], "groups": 1})
    plan = make_plan(write_spec(tmp_path, spec, data=False)).plan
    vol = plan.volumes[0]
    assert vol.shape == (30, 40, 50) and vol.polarity == "white" and vol.needs_convert
    assert vol.raw == f"{tmp_path}/work/data/v1.h5:raw" and vol.groundtruth == f"{tmp_path}/work/data/v1.h5:stack"
    assert vol.raw_source == f"{tmp_path}/raw" and vol.groundtruth_source == f"{tmp_path}/gt.tif"
    assert plan.jobs[0].name == "convert" and plan.jobs[0].units == ["v1"]


def test_hdf5_groundtruth_with_white_polarity_is_converted(tmp_path):
    spec = spec_dict(volumes=[{"name": "v1", "raw": "data/v1.h5", "groundtruth": "data/v1.h5", "polarity": "white"}])
    vol = make_plan(write_spec(tmp_path, spec)).plan.volumes[0]
    assert vol.raw == f"{tmp_path}/data/v1.h5:raw"  # grayscale HDF5 is read in place
    assert vol.groundtruth.endswith("work/data/v1.h5:stack") and vol.needs_convert


def test_tif_shapes_from_headers(tmp_path):
    import numpy as np
    import tifffile

    from hpcffn.io.sources import Source, read_shape, tif_slices

    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((7, 20, 30), np.uint8))
    tifffile.imwrite(tmp_path / "hyper.tif", np.zeros((7, 20, 30), np.uint16), imagej=True)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((20, 30, 3), np.uint8), photometric="rgb")
    assert read_shape(Source("tif", tmp_path / "stack.tif")) == (7, 20, 30)
    assert read_shape(Source("tif", tmp_path / "hyper.tif")) == (7, 20, 30)
    with pytest.raises(HpcffnError, match="grayscale"):
        read_shape(Source("tif", tmp_path / "rgb.tif"))
    slices = tmp_path / "slices"
    slices.mkdir()
    for z in (10, 2, 1):
        tifffile.imwrite(slices / f"s{z}.tif", np.zeros((20, 30), np.uint8))
    assert [p.name for p in tif_slices(slices)] == ["s1.tif", "s2.tif", "s10.tif"]
    assert read_shape(Source("tifdir", slices)) == (3, 20, 30)
    tifffile.imwrite(slices / "s0.tif", np.zeros((2, 20, 30), np.uint8))
    with pytest.raises(HpcffnError, match="single 2-D slices"):
        read_shape(Source("tifdir", slices))


def test_unknown_input_kind(tmp_path):
    (tmp_path / "raw.npy").write_text("x")
    spec = spec_dict(volumes=[{"name": "v1", "raw": "raw.npy"}])
    msg = plan_error(tmp_path, spec, data=False)
    assert "volumes.0.raw" in msg and "neither an HDF5" in msg


def test_short_triple_says_three_values(tmp_path):
    msg = plan_error(tmp_path, spec_dict(subvolume={"size": [500, 500]}))
    assert "field subvolume.size: too few values; give 3" in msg
