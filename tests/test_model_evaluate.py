"""Evaluation metrics on hand-made cases, standalone files and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from hpcffn.core.errors import HpcffnError
from hpcffn.stages.evaluate import compare, evaluate_files, format_table, weighted_mean

pytest.importorskip("skimage")


def _two_objects():
    gt = np.zeros((4, 8, 8), np.uint64)
    gt[:, :, :4] = 1
    gt[:, :, 4:] = 2
    return gt


def test_identical_segmentation_scores_perfect_even_with_other_ids():
    gt = _two_objects()
    seg = np.where(gt == 1, 7, 9).astype(np.uint64)
    m = compare(seg, gt)
    assert m["adapted_rand_error"] == pytest.approx(0.0)
    assert m["vi_split"] == pytest.approx(0.0, abs=1e-12)
    assert m["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert (m["segments"], m["objects"]) == (2, 2)


def test_merge_raises_vi_merge_only():
    gt = _two_objects()
    seg = np.ones_like(gt)  # both objects in one segment
    m = compare(seg, gt)
    assert m["vi_merge"] == pytest.approx(1.0)  # two equal halves merged: one bit
    assert m["vi_split"] == pytest.approx(0.0, abs=1e-12)
    # Pairs of distinct voxels joined in the segmentation: 256*255; joined in both: 2*128*127.
    p = 2 * 128 * 127 / (256 * 255)
    assert m["rand_precision"] == pytest.approx(p)
    assert m["rand_recall"] == pytest.approx(1.0)
    assert m["adapted_rand_error"] == pytest.approx(1 - 2 * p / (p + 1))


def test_split_raises_vi_split_only():
    gt = np.ones((4, 8, 8), np.uint64)
    seg = _two_objects()
    m = compare(seg, gt)
    assert m["vi_split"] == pytest.approx(1.0)
    assert m["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert m["rand_precision"] == pytest.approx(1.0)
    assert m["rand_recall"] == pytest.approx(0.5, abs=0.01)  # pairs of distinct voxels: 0.498


def test_groundtruth_background_is_ignored_but_missed_voxels_count():
    gt = _two_objects()
    gt[:, :2, :] = 0  # unlabelled rows: whatever the segmentation does there does not count
    seg = np.where(gt == 1, 1, 2).astype(np.uint64)
    seg[:, :2, :] = 5
    assert compare(seg, gt)["adapted_rand_error"] == pytest.approx(0.0)
    # A segmentation that leaves labelled voxels at 0 is penalised (0 is one more segment).
    seg2 = seg.copy()
    seg2[:, 4:, :] = 0
    assert compare(seg2, gt)["adapted_rand_error"] > 0.1


def test_no_labels_gives_empty_metrics_and_shape_mismatch_is_an_error():
    m = compare(np.ones((2, 2, 2), np.uint64), np.zeros((2, 2, 2), np.uint64))
    assert m["adapted_rand_error"] is None and m["labelled_voxels"] == 0
    with pytest.raises(HpcffnError, match="shape"):
        compare(np.ones((2, 2, 2)), np.ones((2, 2, 3)))


def test_weighted_mean_weights_by_labelled_voxels():
    rows = [{"labelled_voxels": 100, "adapted_rand_error": 0.0, "rand_precision": 1.0, "rand_recall": 1.0,
             "vi_split": 0.0, "vi_merge": 0.0},
            {"labelled_voxels": 300, "adapted_rand_error": 0.4, "rand_precision": 0.5, "rand_recall": 1.0,
             "vi_split": 1.0, "vi_merge": 2.0},
            {"labelled_voxels": 0, "adapted_rand_error": None, "rand_precision": None, "rand_recall": None,
             "vi_split": None, "vi_merge": None}]
    m = weighted_mean(rows)
    assert m["adapted_rand_error"] == pytest.approx(0.3)
    assert m["vi_merge"] == pytest.approx(1.5)
    assert m["tiles"] == 3 and m["labelled_voxels"] == 400
    table = format_table([{"tile": "t0", **rows[1]}, {"tile": "t1", **rows[2]}])
    assert "0.4000" in table and " - " in table.splitlines()[2] + " "


def _write(path, **datasets):
    import h5py

    with h5py.File(path, "w") as f:
        for name, (data, attrs) in datasets.items():
            ds = f.create_dataset(name, data=data)
            ds.attrs.update(attrs)


def test_evaluate_files_places_a_cropped_segmentation_by_its_offset(tmp_path):
    gt = np.zeros((6, 8, 8), np.uint64)
    gt[:, :, :4] = 3
    gt[:, :, 4:] = 4
    seg = np.where(gt[2:5, 1:7, 2:8] == 3, 1, 2).astype(np.uint64)
    _write(tmp_path / "gt.h5", stack=(gt, {}))
    _write(tmp_path / "seg.h5", seg=(seg, {"offset": [2, 1, 2]}))
    report = evaluate_files(f"{tmp_path}/seg.h5:seg", f"{tmp_path}/gt.h5:stack", tmp_path / "r.json", log=lambda s: None)
    assert report["tiles"][0]["offset"] == [2, 1, 2]
    assert report["overall"]["adapted_rand_error"] == pytest.approx(0.0)
    assert json.loads((tmp_path / "r.json").read_text())["tiles"][0]["segments"] == 2
    # Shifted by one voxel in x the objects no longer line up.
    _write(tmp_path / "seg2.h5", seg=(seg, {"offset": [2, 1, 1]}))
    bad = evaluate_files(f"{tmp_path}/seg2.h5:seg", f"{tmp_path}/gt.h5:stack", log=lambda s: None)
    assert bad["overall"]["adapted_rand_error"] > 0.05
    # A segmentation that does not fit the groundtruth is named as such (was "re-plan").
    _write(tmp_path / "seg3.h5", seg=(seg, {"offset": [4, 1, 2]}))
    with pytest.raises(HpcffnError, match="seg3.h5:seg .*does not lie inside groundtruth"):
        evaluate_files(f"{tmp_path}/seg3.h5:seg", f"{tmp_path}/gt.h5:stack", log=lambda s: None)


def test_cli_evaluate_prints_table_and_user_errors_are_one_line(tmp_path):
    gt = _two_objects()
    _write(tmp_path / "gt.h5", stack=(gt, {}))
    _write(tmp_path / "seg.h5", seg=(gt, {}))
    run = [sys.executable, "-m", "hpcffn.cli", "stage", "evaluate"]
    ok = subprocess.run(run + ["--seg", f"{tmp_path}/seg.h5:seg", "--groundtruth", f"{tmp_path}/gt.h5:stack",
                               "--output", str(tmp_path / "out.json")], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "ARE" in ok.stdout and "0.0000" in ok.stdout
    assert json.loads((tmp_path / "out.json").read_text())["overall"]["adapted_rand_error"] == 0.0
    bad = subprocess.run(run + ["--seg", f"{tmp_path}/seg.h5:nope", "--groundtruth", f"{tmp_path}/gt.h5:stack"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "no dataset 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run(run, capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "--seg" in missing.stderr
