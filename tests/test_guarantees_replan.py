"""Issue 20's data-loss and re-plan items: no input overwritten across volumes, markers that
certify the unit they were made for, re-plans that cannot mix old and new results, plans
switched as one, deleted outputs noticed."""

from __future__ import annotations

import h5py
import pytest
from plan_helpers import spec_dict, write_h5, write_spec
from test_plan_cli import assert_one_line_error, hpcffn

from hpcffn.core.errors import HpcffnError
from hpcffn.stages import convert

# ------------------------------------------------------------------ items 1 and 4: convert never writes an input


def _two_volumes(tmp_path, b_raw: str):
    """Volume a from TIF slices (converted to work/data/a.h5), volume b read from `b_raw`."""
    from plan_helpers import write_tif_dir

    write_tif_dir(tmp_path / "tifs", shape=(100, 130, 70))
    spec = spec_dict(volumes=[{"name": "a", "raw": "tifs"},
                              {"name": "b", "raw": b_raw, "groundtruth": "data/v1.h5:stack"}])
    return write_spec(tmp_path, spec)


def test_plan_refuses_another_volumes_input_where_convert_writes(tmp_path):
    path = _two_volumes(tmp_path, "work/data/a.h5:raw")
    user_file = write_h5(tmp_path / "work" / "data" / "a.h5", datasets=("raw", "my_annotations"))
    for command in ("validate", "plan"):
        assert_one_line_error(hpcffn(command, path), "volumes.1.raw", "convert writes volume a", "move your input")
    with h5py.File(user_file) as fh:
        assert set(fh) == {"raw", "my_annotations"}


def test_plan_refuses_a_file_hpcffn_did_not_write_where_convert_writes(tmp_path):
    path = _two_volumes(tmp_path, "data/v1.h5:raw")
    user_file = write_h5(tmp_path / "work" / "data" / "a.h5", datasets=("raw", "my_annotations"))
    assert_one_line_error(hpcffn("plan", path), "work/data/a.h5 exists and was not written by hpcffn", "move")
    with h5py.File(user_file) as fh:
        assert set(fh) == {"raw", "my_annotations"}


def test_convert_stage_refuses_a_user_file_that_appeared_after_the_plan(tmp_path):
    from hpcffn.core.plan_model import load_plan

    path = _two_volumes(tmp_path, "data/v1.h5:raw")
    assert hpcffn("plan", path).returncode == 0
    plan = load_plan(tmp_path / "work")
    convert.run_from_plan(plan, "a", progress=False)  # hpcffn's own output: replaced freely
    convert.run_from_plan(plan, "a", progress=False)
    target = plan.layout.converted_volume("a")
    target.unlink()
    plan.layout.marker("convert", "a").unlink()
    write_h5(target, datasets=("raw", "my_annotations"))
    with pytest.raises(HpcffnError, match="was not written by hpcffn"):
        convert.run_from_plan(plan, "a", progress=False)
    with h5py.File(target) as fh:
        assert set(fh) == {"raw", "my_annotations"}


def test_standalone_convert_refuses_its_input_as_output_even_with_overwrite(tmp_path):
    x = write_h5(tmp_path / "x.h5", datasets=("raw", "my_annotations"))
    assert_one_line_error(hpcffn("convert", "--raw", f"{x}:raw", "--output", x, "--overwrite"),
                          "is also the input --raw", "another --output")
    with h5py.File(x) as fh:
        assert set(fh) == {"raw", "my_annotations"}
