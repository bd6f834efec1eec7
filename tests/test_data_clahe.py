"""CLAHE in convert: local contrast is equalised, slabs leave no seams, the spec and the
standalone command switch it on."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

pytest.importorskip("skimage")

from hpcffn.stages.clahe import clahe_slabs, slab_plan

KERNEL = (16, 32, 32)


def _uneven_stack(shape=(96, 128, 128)) -> np.ndarray:
    """Textured stack whose contrast fades towards x = 0 (as with uneven staining)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    texture = 60 * np.sin(x / 7.0) * np.cos(y / 9.0) * np.sin(z / 5.0)
    gain = 0.2 + 0.8 * x / shape[2]
    return np.clip(128 + texture * gain + rng.normal(0, 4, shape), 0, 255).astype(np.uint8)


def _run(stack, step, halo=None, clip_limit=0.01):
    out = np.empty_like(stack)
    for z0, block in clahe_slabs(lambda a, b: stack[a:b], len(stack), step, KERNEL, clip_limit, halo=halo):
        out[z0:z0 + len(block)] = block
    return out


def test_slabs_start_on_the_kernel_grid_and_read_a_halo():
    assert list(slab_plan(100, 40, 16)) == [(0, 32, 0, 64), (32, 64, 0, 96), (64, 96, 32, 100), (96, 100, 64, 100)]
    assert next(iter(slab_plan(10, 4, 16))) == (0, 10, 0, 10)


def test_slab_wise_clahe_matches_the_whole_volume_and_shows_no_seams():
    stack = _uneven_stack()
    whole = _run(stack, step=len(stack))  # one slab: the whole-volume result
    slabbed = _run(stack, step=32)
    diff = np.abs(whole.astype(int) - slabbed.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())
    # Without the halo the slabs' edges see other neighbourhoods: the result drifts at the seams.
    seams = np.abs(whole.astype(int) - _run(stack, step=32, halo=0).astype(int))
    assert seams.max() > 5 and seams.mean() > 10 * diff.mean()


@pytest.mark.parametrize("clip_limit,at_least", [(0.01, 0.4), (0.1, 0.9)])
def test_clahe_evens_out_local_contrast(clip_limit, at_least):
    """The faint side's contrast relative to the strong side's: 0.35 before; the clip limit
    says how far CLAHE may go towards 1."""
    stack = _uneven_stack()
    out = _run(stack, step=32, clip_limit=clip_limit)
    faint, strong = (slice(None), slice(None), slice(0, 32)), (slice(None), slice(None), slice(96, 128))
    before = stack[faint].std() / stack[strong].std()
    after = out[faint].std() / out[strong].std()
    assert before < 0.36 and after > at_least, (before, after)


def test_convert_applies_clahe_from_the_standalone_command(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("raw", data=_uneven_stack((40, 64, 64)))
    out = tmp_path / "out.h5"
    cmd = [sys.executable, "-m", "hpcffn.cli", "stage", "convert", "--raw", f"{tmp_path}/in.h5:raw", "--output",
           str(out), "--clahe", "16,32,32", "--slab", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        data = f["raw"][...]
        assert list(f["raw"].attrs["clahe_kernel_size"]) == [16, 32, 32]
    assert np.array_equal(data, _run(_uneven_stack((40, 64, 64)), step=16))
    bad = subprocess.run([*cmd[:-4], "--clahe", "16,32", "--overwrite"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--clahe '16,32': give the z,y,x size" in bad.stderr


def test_the_spec_switches_clahe_on_for_converted_volumes(tmp_path):
    from plan_helpers import spec_dict, write_spec, write_tif_dir

    from hpcffn.plan.planner import make_plan
    from hpcffn.stages.convert import planned_clahe

    spec = spec_dict(convert={"clahe": {"enabled": True, "kernel_size": [8, 32, 32]}})
    planned = make_plan(write_spec(tmp_path, spec))
    clahe = planned_clahe(planned.plan)
    assert clahe is not None and clahe.kernel_size == (8, 32, 32) and clahe.clip_limit == 0.01
    # The plan's volume is HDF5 read in place: the plan says CLAHE does not reach it.
    assert any("convert.clahe applies to grayscale that convert writes; v1" in w for w in planned.warnings)
    write_tif_dir(tmp_path / "tifs")
    spec = spec_dict(convert={"clahe": {"enabled": True}},
                     volumes=[{"name": "v1", "raw": "tifs", "groundtruth": "data/v1.h5:stack"}])
    planned = make_plan(write_spec(tmp_path, spec, name="tif.yaml"))
    assert not any("convert.clahe" in w for w in planned.warnings)
    assert planned_clahe(make_plan(write_spec(tmp_path, spec_dict(), name="off.yaml")).plan) is None


def test_a_bad_clahe_setting_is_one_line_naming_the_field(tmp_path):
    from plan_helpers import spec_dict, write_spec

    from hpcffn.core.errors import HpcffnError
    from hpcffn.plan.spec import load_spec

    path = write_spec(tmp_path, spec_dict(convert={"clahe": {"enabled": True, "kernel_size": [0, 64, 64]}}))
    with pytest.raises(HpcffnError, match=r"convert\.clahe\.kernel_size"):
        load_spec(path)
