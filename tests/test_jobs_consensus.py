"""ffn.inference.consensus in a plan: forward -> reverse -> consensus -> stitch -> evaluate on the
tiny example, run by the local runner and by the test SLURM with the real stage code.

Training is left out to keep the test short: the model is a depth-1 convstack whose weights are
set by hand to mark the tiny data's bright cell interiors as object (so fills do real work)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_finished

pytestmark = [pytest.mark.slow, pytest.mark.tf]

REPO = Path(__file__).resolve().parents[1]
HPCFFN = [sys.executable, "-m", "hpcffn.cli"]


def _interior_model(prefix: Path) -> None:
    """A depth-1, 1-feature convstack: update = 12 * relu(mean of the 3^3 image around - 0.4) - 4."""
    import tensorflow as tf

    from hpcffn.core.params import ModelParams
    from hpcffn.ffn.model import build_model

    model = build_model(ModelParams(depth=1, features=1, fov_size=(9, 9, 9), deltas=(2, 2, 2)))
    a = np.zeros((3, 3, 3, 2, 1), np.float32)
    a[..., 0, 0] = 1 / 27
    b = np.zeros((3, 3, 3, 1, 1), np.float32)
    b[1, 1, 1, 0, 0] = 1
    for name, w, bias in (("conv0_a", a, -0.4), ("conv0_b", b, 0.0), ("conv_lom", np.full((1, 1, 1, 1, 1), 12.0, np.float32), -4.0)):
        model.weights[name].assign(w)
        model.biases[name].assign([bias])
    tf.train.Checkpoint(model=model, step=tf.Variable(1, dtype=tf.int64)).save(str(prefix))


def _plan(tmp: Path) -> Path:
    import yaml

    dst = tmp / "tiny"
    dst.mkdir()
    shutil.copy(REPO / "examples" / "tiny" / "make_data.py", dst)
    subprocess.run([sys.executable, str(dst / "make_data.py")], check=True, capture_output=True, cwd=dst)
    _interior_model(dst / "model" / "ckpt")
    spec = yaml.safe_load((REPO / "examples" / "tiny" / "tiny.yaml").read_text())
    spec["stages"] = ["convert", "infer", "stitch", "evaluate"]
    spec["ffn"]["model"].update(depth=1, features=1)
    spec["ffn"]["inference"].update(checkpoint="model", consensus={"passes": ["forward", "reverse"], "split_min_size": 100})
    (dst / "tiny.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([*HPCFFN, "plan", str(dst / "tiny.yaml")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return dst / "work"


def _check_outputs(workdir: Path) -> None:
    import h5py

    from hpcffn.core.plan_model import load_plan
    from hpcffn.jobs.status import collect

    plan = load_plan(workdir)
    assert [j.name for j in plan.jobs if j.stage in ("infer", "reverse", "consensus")] == \
        ["infer_g0", "infer_g1", "reverse_g0", "reverse_g1", "consensus"]
    report = collect(plan)
    for row in report.rows:
        assert row.counts == {"done": row.tasks} and row.outputs == row.tasks, row
    segments = 0
    for tile in plan.tiles:
        with h5py.File(plan.layout.pass_segmentation(tile.name, "forward"), "r") as f:
            forward, origins = f["seg"][...], f["origins"][...]
        with h5py.File(plan.layout.pass_segmentation(tile.name, "reverse"), "r") as f:
            assert f.attrs["seed_policy"] == "invert_origins" and len(f["origins"])
        with h5py.File(plan.layout.segmentation(tile.name), "r") as f:  # what joins/stitch/evaluate read
            consensus = f["seg"][...]
            assert tuple(f.attrs["offset"]) == tile.infer_box.start and f.attrs["split_min_size"] == 100
        assert sorted(origins["id"]) == sorted(np.unique(forward[forward > 0]))
        assert set(np.unique(consensus)) <= set(np.unique(consensus[forward > 0])) | {0}  # (0, id) -> 0
        segments += len(origins)
    assert segments >= 8  # the cells were segmented
    metrics = json.loads(plan.layout.evaluation_report.read_text())
    assert metrics, "evaluate wrote its report from the consensus segmentations"
    assert plan.layout.stitched("blobs").is_dir()


def test_consensus_plan_runs_end_to_end_with_the_local_runner(tmp_path):
    workdir = _plan(tmp_path)
    proc = subprocess.run([*HPCFFN, "run", str(workdir), "--no-progress", "--parallel", "2"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_outputs(workdir)
    status = subprocess.run([*HPCFFN, "status", str(workdir)], capture_output=True, text=True, check=False)
    assert status.returncode == 0 and "reverse_g0" in status.stdout and "consensus" in status.stdout
    report = subprocess.run([*HPCFFN, "report", str(workdir)], capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    pictures = {p.name for p in (workdir / "report").glob("tile_*.png")}
    shown = {n for n in pictures if not n.endswith(("_forward.png", "_reverse.png"))}
    assert shown and all(n.replace(".png", f"_{k}.png") in pictures for n in shown for k in ("forward", "reverse"))
    again = subprocess.run([*HPCFFN, "run", str(workdir), "--resume", "--no-progress"], capture_output=True,
                           text=True, check=False)
    assert again.returncode == 0, again.stderr  # nothing left to do: every unit has its marker


@pytest.mark.slurm
def test_consensus_plan_runs_end_to_end_on_slurm(slurm, job_tmp):
    from hpcffn.core.plan_model import load_plan

    workdir = _plan(job_tmp)
    proc = subprocess.run([*HPCFFN, "submit", str(workdir)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    report = wait_finished(load_plan(workdir), timeout=900, poll=5)
    for row in report.rows:
        assert row.states == {"COMPLETED": row.tasks}, row
    _check_outputs(workdir)
