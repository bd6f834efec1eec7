"""Validate and convert tell a backwards polarity from dense groundtruth (issue 18; issue 20 items 9, 17).

Small synthetic stacks mimic each case a lab brings: dense groundtruth as a white TIF with white
one-voxel boundaries (FIB-25 ts2_dev's format), a sparse mask declared backwards, and uint16 ids.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
import yaml
from plan_helpers import write_spec
from test_plan_cli import assert_one_line_error, hpcffn

from hpcffn.io.labeling import polarity_findings
from hpcffn.stages.convert import ConvertOptions, convert

SHAPE = (8, 96, 96)


def dense_ids(shape=SHAPE, cells=40, seed=0) -> np.ndarray:
    """Every voxel in some object: nearest of `cells` random seeds (Voronoi cells), ids 1..cells."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint16)
    points = rng.integers(0, shape, size=(cells, 3))
    seeds[tuple(points.T)] = np.arange(1, cells + 1)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(nearest)]


def white_boundary_gt(ids: np.ndarray) -> np.ndarray:
    """White background, black objects, white one-voxel boundaries where ids change (6-neighbours)."""
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :, 1:] |= ids[:, :, 1:] != ids[:, :, :-1]
    return np.where(edge, 255, 0).astype(np.uint8)


def sparse_mask() -> np.ndarray:
    """Black background, a few white objects (a mask whose right polarity is black)."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, 10:30, 10:30] = 255
    mask[:, 50:60, 40:70] = 255
    return mask


def planes(stack):
    return [stack[z] for z in (0, 3, 7)]


def test_dense_white_boundary_groundtruth_is_accepted_with_polarity_white():
    gt = white_boundary_gt(dense_ids())
    assert (gt == 0).mean() > 0.85  # objects cover most of each slice, as in FIB-25
    assert polarity_findings(planes(gt), "white", "gt.tif") == ([], [])


def test_dense_groundtruth_read_black_is_refused_as_boundaries():
    errors, _ = polarity_findings(planes(white_boundary_gt(dense_ids())), "black", "gt.tif")
    assert len(errors) == 1 and "thin lines" in errors[0] and "boundaries" in errors[0]
    assert "set polarity: white" in errors[0]


def test_inverted_sparse_mask_is_still_refused():
    errors, _ = polarity_findings(planes(sparse_mask()), "white", "gt.tif")
    assert len(errors) == 1 and "one connected region" in errors[0] and "set polarity: black" in errors[0]
    assert polarity_findings(planes(sparse_mask()), "black", "gt.tif") == ([], [])


@pytest.mark.parametrize("polarity", ["white", "black"])
def test_uint16_ids_suggest_polarity_labels_never_the_other_polarity(polarity):
    ids = dense_ids().astype(np.uint16)
    errors, warnings = polarity_findings(planes(ids), polarity, "gt.tif")
    assert len(errors) == 1 and "set polarity: labels" in errors[0], (errors, warnings)
    assert "set polarity: white" not in errors[0] and "set polarity: black" not in errors[0]


def test_sparse_uint16_ids_read_as_a_mask_are_warned_about():
    ids = np.zeros(SHAPE, np.uint16)
    ids[:, 10:30, 10:30], ids[:, 30:50, 10:30] = 7, 300  # two touching objects become one as a mask
    errors, warnings = polarity_findings(planes(ids), "black", "gt.tif")
    assert not errors and len(warnings) == 1 and "set polarity: labels" in warnings[0]


def _tif_spec(tmp_path, gt: np.ndarray, polarity: str):
    raw = np.random.default_rng(1).integers(0, 256, gt.shape).astype(np.uint8)
    tmp_path.mkdir(parents=True)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    tifffile.imwrite(tmp_path / "gt.tif", gt)
    path = write_spec(tmp_path, data=False)
    spec = yaml.safe_load(path.read_text())
    spec["volumes"] = [{"name": "v1", "raw": "raw.tif", "groundtruth": "gt.tif", "polarity": polarity}]
    spec["subvolume"]["size"] = [8, 48, 48]
    spec["ffn"] = {"coordinates": {"margin": [3, 3, 3]}, "model": {"depth": 2, "fov_size": [5, 5, 1], "deltas": [1, 1, 0]}}
    path.write_text(yaml.safe_dump(spec))
    return path


def test_validate_accepts_dense_white_groundtruth_and_refuses_it_read_black(tmp_path):
    gt = white_boundary_gt(dense_ids())
    ok = hpcffn("validate", _tif_spec(tmp_path / "white", gt, "white"))
    assert ok.returncode == 0, ok.stderr
    assert "polarity" not in ok.stderr
    assert_one_line_error(hpcffn("validate", _tif_spec(tmp_path / "black", gt, "black")),
                          "volume v1", "thin lines", "set polarity: white")


def test_convert_with_polarity_black_on_dense_groundtruth_writes_nothing(tmp_path):
    """Item 9: following the old advice never converts boundary fragments as objects."""
    tifffile.imwrite(tmp_path / "gt.tif", white_boundary_gt(dense_ids()))
    proc = hpcffn("convert", "--groundtruth", tmp_path / "gt.tif", "--polarity", "black", "--output", tmp_path / "o.h5")
    assert_one_line_error(proc, "thin lines", "set polarity: white")
    assert not (tmp_path / "o.h5").exists()


def test_convert_of_dense_white_groundtruth_keeps_every_object_wider_than_a_boundary(tmp_path):
    ids = dense_ids()
    tifffile.imwrite(tmp_path / "gt.tif", white_boundary_gt(ids))
    info = convert(tmp_path / "o.h5", ConvertOptions(groundtruth=str(tmp_path / "gt.tif"), polarity="white",
                                                     progress=False))
    with h5py.File(tmp_path / "o.h5") as fh:
        stack = fh["stack"][...]
    # Each converted object lies inside one true cell (boundaries only ever split, never merge).
    inside = stack != 0
    pairs = np.unique(np.stack([stack[inside], ids[inside]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == info["objects"]
    assert info["objects"] >= len(np.unique(ids)) - 5
