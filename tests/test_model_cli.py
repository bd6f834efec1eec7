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
        (("infer", "--plan", "p.json", "--tile", "0", "--mask", "m.h5"), "mask, origins and output come from the plan"),
        (("infer", "--plan", "p.json", "--tile", "0", "--origins", "f.h5"), "origins and output come from the plan"),
        (("infer", "--plan", "p.json", "--tile", "0", "--pass", "sideways"), "give forward or reverse"),
        (("infer", "--image", "a.h5:raw", "--checkpoint", "c", "--output", "o.h5", "--pass", "reverse"),
         "--seed-policy invert_origins --origins"),
        (("consensus", "--a", "a.h5"), "--a FWD.h5 --b REV.h5 --output C.h5"),
        (("consensus", "--plan", "p.json", "--tile", "0", "--a", "a.h5"), "--tile T only"),
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


def _seg_file(path, seg, offset=(0, 0, 0), origins=None):
    import h5py
    import numpy as np

    from hpcffn.io import origins as origin_table

    with h5py.File(path, "w") as f:
        ds = f.create_dataset("seg", data=np.asarray(seg, np.uint64))
        ds.attrs["offset"] = offset
        if origins is not None:
            origin_table.write(f, origins)


def test_invert_origins_needs_a_segmentation_with_origins_of_the_same_box(tmp_path):
    import h5py
    import numpy as np

    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["raw"] = np.zeros((40, 40, 40), np.uint8)
    base = ("infer", "--image", f"{tmp_path}/img.h5:raw", "--checkpoint", "fib25", "--output", str(tmp_path / "o.h5"),
            "--seed-policy", "invert_origins")
    out = _run(*base)
    assert out.returncode == 2 and "give --origins FWD.h5" in out.stderr, out.stderr
    _seg_file(tmp_path / "plain.h5", np.zeros((40, 40, 40)))
    out = _run(*base, "--origins", str(tmp_path / "plain.h5"))
    assert out.returncode == 2 and "has no `origins` dataset" in out.stderr and out.stderr.count("\n") == 1
    from hpcffn.io.origins import Origin

    _seg_file(tmp_path / "other.h5", np.zeros((20, 40, 40)), origins={1: Origin((5, 5, 5), 3, 0.1)})
    out = _run(*base, "--origins", str(tmp_path / "other.h5"))
    assert out.returncode == 2 and "of the same box" in out.stderr
    out = _run("infer", "--image", f"{tmp_path}/img.h5:raw", "--checkpoint", "fib25", "--output",
               str(tmp_path / "o.h5"), "--origins", str(tmp_path / "other.h5"))
    assert out.returncode == 2 and "only read with --seed-policy invert_origins" in out.stderr


def test_stage_consensus_writes_the_split_and_keeps_surviving_origins(tmp_path):
    import h5py
    import numpy as np

    from hpcffn.io import origins as origin_table
    from hpcffn.io.origins import Origin

    a = np.zeros((4, 6, 6), np.uint64)
    a[:, :, :4] = 1  # one forward segment over two reverse objects
    a[:, :, 4:] = 2
    b = np.zeros_like(a)
    b[:, :, :2], b[:, :, 2:4], b[:, :, 4:] = 7, 8, 9
    _seg_file(tmp_path / "f.h5", a, (3, 4, 5), {1: Origin((1, 1, 1), 4, 0.5), 2: Origin((2, 2, 5), 2, 0.2)})
    _seg_file(tmp_path / "r.h5", b, (3, 4, 5))
    out = _run("consensus", "--a", str(tmp_path / "f.h5"), "--b", str(tmp_path / "r.h5"), "--output",
               str(tmp_path / "c.h5"), "--split-min-size", "10")
    assert out.returncode == 0, out.stderr
    with h5py.File(tmp_path / "c.h5", "r") as f:
        seg = f["seg"][...]
        assert tuple(f["seg"].attrs["offset"]) == (3, 4, 5)
        kept = origin_table.read(f)
    assert (seg[:, :, :2] == 1).all() and (seg[:, :, 2:4] == 3).all() and (seg[:, :, 4:] == 2).all()
    assert sorted(kept) == [1, 2] and kept[1].start == (1, 1, 1)  # the new piece 3 has no origin
    again = _run("consensus", "--a", str(tmp_path / "f.h5"), "--b", str(tmp_path / "r.h5"), "--output",
                 str(tmp_path / "c.h5"))
    assert again.returncode == 2 and "already exists" in again.stderr
    _seg_file(tmp_path / "shifted.h5", b, (0, 0, 0))
    out = _run("consensus", "--a", str(tmp_path / "f.h5"), "--b", str(tmp_path / "shifted.h5"), "--output",
               str(tmp_path / "d.h5"))
    assert out.returncode == 2 and "not segmentations of the same box" in out.stderr and not (tmp_path / "d.h5").exists()
