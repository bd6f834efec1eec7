"""The CLI's last line of defence: file-system errors are one line, not a traceback."""

import os
import subprocess

import h5py
import numpy as np


def test_an_unwritable_output_path_is_one_line(tmp_path):
    with h5py.File(tmp_path / "gt.h5", "w") as fh:
        fh.create_dataset("stack", data=np.ones((12, 12, 12), np.uint64))
    (tmp_path / "afile").write_text("not a folder")
    cmd = ["hpcffn", "stage", "partitions", "--input", str(tmp_path / "gt.h5:stack"),
           "--output", str(tmp_path / "afile" / "af.h5:af"), "--lom-radius", "2,2,2", "--min-size", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "afile" in lines[0] and "Traceback" not in proc.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "HPCFFN_DEBUG": "1"})
    assert "Traceback" in debug.stderr
