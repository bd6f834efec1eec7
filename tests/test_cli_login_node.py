"""The base install (a login node: no TensorFlow, SciPy, scikit-image, cc3d or edt) plans,
submits, watches and exports.

Each command runs in a fresh interpreter where importing those packages fails, as it would
without the `ffn` extra.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
from plan_helpers import write_spec

HEAVY = ("tensorflow", "scipy", "skimage", "cc3d", "edt", "keras")

RUNNER = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: the base install has no ffn extra)", name=name)
        return None
sys.meta_path.insert(0, Block())
from hpcffn.cli import main
sys.argv = ["hpcffn", *sys.argv[1:]]
main()
"""


def _base(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


def test_login_node_commands_need_no_stage_packages(tmp_path):
    spec = write_spec(tmp_path)
    work = tmp_path / "work"
    for args in (["init", str(tmp_path / "new.yaml")], ["validate", str(spec)], ["plan", str(spec)],
                 ["submit", str(work), "--dry-run"], ["status", str(work)], ["status", str(work), "--json"]):
        proc = _base(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    with h5py.File(tmp_path / "seg.h5", "w") as f:
        f.create_dataset("seg", data=np.arange(24, dtype=np.uint64).reshape(2, 3, 4))
    proc = _base("export", str(tmp_path / "seg.h5"), str(tmp_path / "seg.tif"))
    assert proc.returncode == 0, proc.stderr
    # A stage command that needs the extra says so in one line.
    proc = _base("stage", "stitch", "--segmentation", str(tmp_path / "seg.h5"), "--output", str(tmp_path / "x.h5"))
    want = ("hpcffn: error: this command needs scipy, part of the stage code's extra: pip install 'hpcffn[ffn]', "
            "or run it inside the hpcffn container")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [want], proc.stderr


def test_the_stitched_ome_zarr_exports_on_a_login_node(tmp_path):
    import zarr

    from hpcffn.io import ome_zarr

    store = tmp_path / "v.ome.zarr"
    ome_zarr.create(store, (2, 3, 4), (2, 3, 4), np.dtype(np.uint16))
    zarr.open_array(str(store / "labels" / "seg" / "0"), mode="r+")[...] = np.arange(24).reshape(2, 3, 4)
    proc = _base("export", str(store), str(tmp_path / "seg.tif"))
    assert proc.returncode == 0 and "uint8" in proc.stdout, proc.stderr
