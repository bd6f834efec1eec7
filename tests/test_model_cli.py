"""`hpcffn stage train|infer|evaluate` argument handling: wrong input is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hpcffn.commands.model_stages import _bbox, _triple
from hpcffn.core.errors import HpcffnError


def _run(*args):
    return subprocess.run([sys.executable, "-m", "hpcffn.cli", "stage", *args], capture_output=True, text=True,
                          check=False, timeout=120)


def test_triples_and_boxes():
    assert _triple("33,33,17", "--fov-size") == (33, 33, 17)
    assert _bbox("0,10,20:5,6,7") == ((0, 10, 20), (5, 6, 7))
    assert _bbox(None) == (None, None)
    for bad in ("1,2", "a,b,c", "1,2,3,4"):
        with pytest.raises(HpcffnError, match="3 integers separated by commas"):
            _triple(bad, "--deltas")
    with pytest.raises(HpcffnError, match="z0,y0,x0:dz,dy,dx"):
        _bbox("0,0,0")
    with pytest.raises(HpcffnError, match="sizes >= 1"):
        _bbox("0,0,0:0,5,5")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("train",), "--plan P --group G"),
        (("train", "--plan", "nowhere/plan.json"), "--group"),
        (("train", "--plan", "nowhere/plan.json", "--group", "g0"), "no plan at"),
        (("infer", "--image", "a.h5:raw", "--checkpoint", "c", "--output", "o.h5", "--bbox", "1,2:3"), "--bbox"),
        (("infer", "--image", "a.h5:raw"), "--checkpoint"),
        (("infer", "--plan", "p.json", "--tile", "0", "--output", "x.h5"), "--tile T only"),
        (("infer", "--plan", "p.json", "--tile", "0", "--mask", "m.h5"), "mask and output come from the plan"),
        (("stitch", "--plan", "p.json"), "--volume NAME|INDEX"),
        (("stitch", "--segmentation", "a.h5"), "--output out.h5:seg"),
        (("train", "--coordinates", "c.gz", "--volume", "v:a.h5", "--train-dir", "t", "--fov-size", "8,8,8"),
         "odd"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, needle, tmp_path):
    out = _run(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert needle in out.stderr and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_missing_inputs_name_the_file(tmp_path):
    out = _run("infer", "--image", f"{tmp_path}/none.h5:raw", "--checkpoint", str(tmp_path), "--output",
               str(tmp_path / "o.h5"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_bbox_outside_the_image_is_named(tmp_path):
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["raw"] = np.zeros((40, 40, 40), np.uint8)
    out = _run("infer", "--image", f"{tmp_path}/img.h5:raw", "--checkpoint", str(tmp_path), "--output",
               str(tmp_path / "o.h5"), "--bbox", "30,0,0:35,35,35")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "lies outside" in out.stderr and "--bbox" in out.stderr


def test_pretrained_name_with_other_model_settings_is_one_line(tmp_path):
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["raw"] = np.zeros((40, 40, 40), np.uint8)
    out = _run("infer", "--image", f"{tmp_path}/img.h5:raw", "--checkpoint", "fib25", "--output",
               str(tmp_path / "o.h5"), "--depth", "2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "pretrained model fib25 needs ffn.model depth 12 (given: 2)" in out.stderr
