"""`hpcffn export`: HDF5 volumes back out as TIF (a directory of slices or one multi-page file)."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest
import tifffile

from hpcffn.core.errors import HpcffnError
from hpcffn.io.export import export_tif
from hpcffn.io.tif import open_volume

HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _h5(path, data, name="seg"):
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=data)
    return path


def test_directory_of_slices_round_trips_through_convert_readers(tmp_path):
    seg = np.random.default_rng(0).integers(0, 70000, (21, 9, 11)).astype(np.uint64)
    info = export_tif(f"{_h5(tmp_path / 's.h5', seg)}", tmp_path / "slices")
    assert info["dtype"] == "uint32" and info["slices"] == 21
    names = sorted(p.name for p in (tmp_path / "slices").iterdir())
    assert names[0] == "slices_0000.tif" and len(names) == 21
    with open_volume(str(tmp_path / "slices")) as vol:  # the same natural-order reader convert uses
        np.testing.assert_array_equal(vol.read(0, 21), seg)


def test_multipage_stack_with_the_smallest_dtype(tmp_path):
    seg = np.arange(5 * 6 * 70, dtype=np.uint64).reshape(5, 6, 70) % 300  # ids up to 299
    info = export_tif(f"{_h5(tmp_path / 's.h5', seg)}:seg", tmp_path / "seg.tif")
    back = tifffile.imread(tmp_path / "seg.tif")
    assert info["dtype"] == "uint16" and back.dtype == np.uint16
    np.testing.assert_array_equal(back, seg)
    raw = np.random.default_rng(1).integers(0, 256, (4, 5, 6)).astype(np.uint8)
    export_tif(f"{_h5(tmp_path / 'r.h5', raw, 'raw')}:raw", tmp_path / "raw.tif")
    assert tifffile.imread(tmp_path / "raw.tif").dtype == np.uint8


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    src = f"{_h5(tmp_path / 's.h5', np.ones((2, 3, 4), np.uint64))}"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(HpcffnError, match="already exists"):
        export_tif(src, tmp_path / "out")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    export_tif(src, tmp_path / "out", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["out_0000.tif", "out_0001.tif"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind


def test_ids_beyond_32_bits_and_bad_input_are_one_line_errors(tmp_path):
    big = _h5(tmp_path / "big.h5", np.full((2, 2, 2), 2**40, np.uint64))
    proc = subprocess.run([*HPCFFN, "export", str(big), str(tmp_path / "x.tif")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "do not fit in 32 bits" in proc.stderr and not (tmp_path / "x.tif").exists()
    proc = subprocess.run([*HPCFFN, "export", f"{big}:nope", str(tmp_path / "y")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "no dataset 'nope' (datasets present: seg)" in proc.stderr
    ok = subprocess.run([*HPCFFN, "export", str(_h5(tmp_path / "s.h5", np.ones((3, 4, 5), np.uint64))), str(tmp_path / "z")],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "3 slices 4x5, uint8, directory of slices" in ok.stdout
