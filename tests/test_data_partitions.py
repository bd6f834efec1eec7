"""Partitions equal a textbook per-voxel implementation of FFN's definition."""

import h5py
import numpy as np
import pytest

from hpcffn.core.errors import HpcffnError
from hpcffn.stages.partitions import compute_partitions, partitions_standalone

THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def reference(seg, thresholds, radius_xyz, min_size, exclusion=(), whitelist=None, mask=None):
    """Straight from the definition: loop over voxels, count same-id voxels in the box."""
    seg = seg.copy()
    ids, sizes = np.unique(seg, return_counts=True)
    for i, n in zip(ids, sizes):
        if n < min_size:
            seg[seg == i] = 0
    rz, ry, rx = radius_xyz[::-1]
    fov = (2 * rz + 1) * (2 * ry + 1) * (2 * rx + 1)
    out = np.full(seg.shape, 255, np.uint8)
    Z, Y, X = seg.shape
    for z in range(rz, Z - rz):
        for y in range(ry, Y - ry):
            for x in range(rx, X - rx):
                if any((x - ex) ** 2 + (y - ey) ** 2 + (z - ez) ** 2 <= er**2 for ex, ey, ez, er in exclusion):
                    continue
                if mask is not None and mask[z - rz:z + rz + 1, y - ry:y + ry + 1, x - rx:x + rx + 1].any():
                    continue
                v = seg[z, y, x]
                if v == 0 or (whitelist is not None and v not in whitelist):
                    out[z, y, x] = 0
                    continue
                box = seg[z - rz:z + rz + 1, y - ry:y + ry + 1, x - rx:x + rx + 1]
                frac = np.count_nonzero(box == v) / fov
                value = len(thresholds) + 1
                for i, t in enumerate(thresholds):
                    if frac < t:
                        value = i + 1
                        break
                out[z, y, x] = value
    return out


def blobs(shape, n, seed):
    """Touching random objects of varied sizes (Voronoi cells) with some background."""
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, shape, size=(n, 3))
    zz, yy, xx = np.indices(shape)
    d = (zz[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2 * 3 + (xx[..., None] - pts[:, 2]) ** 2
    seg = (np.argmin(d, axis=-1) + 1).astype(np.uint64) * 7  # sparse ids
    seg[rng.random(shape) < 0.1] = 0
    return seg


@pytest.mark.parametrize(
    "shape,radius,min_size,seed",
    [
        ((14, 16, 18), (2, 2, 2), 0, 0),
        ((12, 17, 15), (3, 1, 2), 20, 1),  # anisotropic, dust removed
        ((10, 13, 11), (0, 2, 1), 50, 2),  # radius 0 on one axis
        ((9, 9, 9), (1, 1, 1), 10**6, 3),  # everything is dust
    ],
)
def test_matches_reference(shape, radius, min_size, seed):
    seg = blobs(shape, 12, seed)
    got = compute_partitions(seg, THRESHOLDS, radius, min_size, threads=1)
    want = reference(seg, THRESHOLDS, radius, min_size)
    np.testing.assert_array_equal(got, want)
    assert got.shape == seg.shape
    # Objects cut into z pieces (one slice each) give the same values.
    np.testing.assert_array_equal(compute_partitions(seg, THRESHOLDS, radius, min_size, piece_voxels=1), want)


def test_threads_and_exclusions_match_reference():
    seg = blobs((13, 14, 15), 10, 5)
    excl = [(7, 6, 6, 3.0), (0, 0, 0, 2.0)]
    got = compute_partitions(seg, (0.3, 0.6, 0.9), (2, 1, 2), 5, exclusion_regions=excl, threads=2)
    want = reference(seg, (0.3, 0.6, 0.9), (2, 1, 2), 5, exclusion=excl)
    np.testing.assert_array_equal(got, want)
    assert (got == 255).any() and (got == 0).any() and (got == 4).any()


def test_id_whitelist_partitions_only_the_listed_objects():
    seg = blobs((12, 14, 13), 10, 6)
    ids = [int(i) for i in np.unique(seg) if i][:4]
    got = compute_partitions(seg, THRESHOLDS, (2, 2, 1), 5, id_whitelist=ids, threads=2)
    np.testing.assert_array_equal(got, reference(seg, THRESHOLDS, (2, 2, 1), 5, whitelist=set(ids)))
    inner = got[1:-1, 2:-2, 2:-2]  # lom_radius is x,y,z
    others = ~np.isin(seg[1:-1, 2:-2, 2:-2], ids)
    assert (inner[others] == 0).all() and (inner[~others] > 0).all()


def test_mask_excludes_every_voxel_whose_box_reaches_it():
    seg = blobs((12, 14, 13), 10, 8)
    mask = np.zeros(seg.shape, bool)
    mask[6, 3:5, 9] = True
    mask[0, 0, 0] = True  # in the border band: changes nothing there
    got = compute_partitions(seg, THRESHOLDS, (2, 1, 2), 5, mask=mask, threads=2)
    np.testing.assert_array_equal(got, reference(seg, THRESHOLDS, (2, 1, 2), 5, mask=mask))
    assert (got[4:9, 2:6, 7:12] == 255).all() and (got[2:-2, 1:-1, 2:-2] != 255).any()
    with pytest.raises(HpcffnError, match="mask shape"):
        compute_partitions(seg, THRESHOLDS, (2, 1, 2), 5, mask=mask[1:])


def test_radius_larger_than_volume_is_all_excluded():
    seg = np.ones((4, 20, 20), np.uint32)
    assert (compute_partitions(seg, THRESHOLDS, (1, 1, 2), 0) == 255).all()


def test_uniform_object_is_top_class_and_large_ids():
    seg = np.full((7, 7, 7), 2**60, np.uint64)
    af = compute_partitions(seg, THRESHOLDS, (1, 1, 1), 0)
    assert af[1:-1, 1:-1, 1:-1].min() == len(THRESHOLDS) + 1


def test_rejects_float_and_negative_ids():
    with pytest.raises(HpcffnError, match="integer"):
        compute_partitions(np.zeros((5, 5, 5), np.float32), THRESHOLDS, (1, 1, 1), 0)
    with pytest.raises(HpcffnError, match="negative"):
        compute_partitions(-np.ones((5, 5, 5), np.int32), THRESHOLDS, (1, 1, 1), 0)


def test_standalone_writes_ffn_attributes(tmp_path):
    seg = blobs((12, 12, 12), 6, 7)
    with h5py.File(tmp_path / "gt.h5", "w") as fh:
        fh["stack"] = seg
    counts = partitions_standalone(f"{tmp_path}/gt.h5:stack", f"{tmp_path}/af.h5:af", THRESHOLDS, (2, 2, 1), 5)
    with h5py.File(tmp_path / "af.h5") as fh:
        ds = fh["af"]
        np.testing.assert_array_equal(ds[...], reference(seg, THRESHOLDS, (2, 2, 1), 5))
        assert tuple(ds.attrs["offset"]) == (0, 0, 0)
        # FFN's bounding box (x,y,z start, size) shrunk by the radius.
        np.testing.assert_array_equal(ds.attrs["bounding_boxes"], [[[2, 2, 1], [8, 8, 10]]])
        values, n = ds.attrs["partition_counts"]
        assert sum(n) == 8 * 8 * 10 and 255 not in values
    assert sum(counts.values()) == 12**3
    # An absolute HDF5 dataset name is the same dataset (was "HDF5 file gt.h5:/stack does not exist").
    again = partitions_standalone(f"{tmp_path}/gt.h5:/stack", f"{tmp_path}/af2.h5:/af", THRESHOLDS, (2, 2, 1), 5)
    assert again == counts
    with h5py.File(tmp_path / "af2.h5") as fh:
        assert list(fh) == ["af"]


def test_standalone_id_whitelist_and_mask_flags(tmp_path):
    import subprocess
    import sys

    seg = blobs((12, 12, 12), 6, 7)
    with h5py.File(tmp_path / "gt.h5", "w") as fh:
        fh["stack"] = seg
    ids = [int(i) for i in np.unique(seg) if i][:2]
    cli = [sys.executable, "-m", "hpcffn.cli", "stage", "partitions", "--input", f"{tmp_path}/gt.h5",
           "--lom-radius", "2,2,1", "--min-size", "5"]
    ok = subprocess.run([*cli, "--output", f"{tmp_path}/af.h5", "--id-whitelist", ",".join(map(str, ids))],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    with h5py.File(tmp_path / "af.h5") as fh:
        np.testing.assert_array_equal(fh["af"][...], reference(seg, THRESHOLDS, (2, 2, 1), 5, whitelist=set(ids)))
    mask = np.zeros(seg.shape, np.uint8)
    mask[5, 5, 5] = 7
    with h5py.File(tmp_path / "m.h5", "w") as fh:
        fh["mask"] = mask
    masked = subprocess.run([*cli, "--output", f"{tmp_path}/am.h5", "--mask", f"{tmp_path}/m.h5"],
                            capture_output=True, text=True, check=False)
    assert masked.returncode == 0, masked.stderr
    with h5py.File(tmp_path / "am.h5") as fh:
        np.testing.assert_array_equal(fh["af"][...], reference(seg, THRESHOLDS, (2, 2, 1), 5, mask=mask != 0))
    bad = subprocess.run([*cli, "--output", f"{tmp_path}/b.h5", "--id-whitelist", "3,x"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "hpcffn: error: --id-whitelist '3,x': write object ids (integers >= 1) separated by commas, e.g. 3,17,42"]


def test_read_labels_compact(tmp_path):
    from hpcffn.stages.partitions import read_labels_compact

    seg = blobs((9, 10, 11), 5, 9)
    big = seg.copy()
    big[8, 9, 10] = 2**40
    with h5py.File(tmp_path / "s.h5", "w") as fh:
        fh["small"] = seg
        fh["big"] = big
    got = read_labels_compact(f"{tmp_path}/s.h5:small", (1, 2, 3), (8, 8, 8), slab_voxels=64)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, seg[1:9, 2:10, 3:11])
    got = read_labels_compact(f"{tmp_path}/s.h5:big", (1, 2, 3), (8, 8, 8), slab_voxels=64)
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, big[1:9, 2:10, 3:11])
    with pytest.raises(HpcffnError, match="outside"):
        read_labels_compact(f"{tmp_path}/s.h5:small", (5, 0, 0), (8, 8, 8))


def diagonal_tubes(shape, radius, slope, seed):
    """Touching tubes running obliquely through z (long bounding boxes, small footprints)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    seg = np.zeros(shape, np.uint64)
    for i, (y0, x0) in enumerate(rng.integers(0, shape[1], size=(8, 2))):
        d2 = (yy - y0 + zz * slope[0]) ** 2 + (xx - x0 - zz * slope[1]) ** 2
        seg[(d2 <= radius**2) & (seg == 0)] = 10 + i
    return seg


def test_oblique_objects_cut_into_trimmed_pieces_match_reference(monkeypatch):
    from hpcffn.stages import partition_objects

    cuts = []
    pieces = partition_objects._pieces

    def spy(*args):
        cuts.append(pieces(*args))
        return cuts[-1]

    # Tiny arrays make per-row overhead dominate; without it the model cuts long objects.
    monkeypatch.setattr(partition_objects, "_ROW_COST", 0)
    monkeypatch.setattr(partition_objects, "_pieces", spy)
    seg = diagonal_tubes((40, 16, 16), 2.5, (0.3, 0.2), 0)
    radius = (2, 2, 3)  # x,y,z
    got = compute_partitions(seg, THRESHOLDS, radius, 20, threads=2)
    np.testing.assert_array_equal(got, reference(seg, THRESHOLDS, radius, 20))
    # Some object was cut into z pieces narrower than its bounding box.
    assert any(len(c) > 1 for c in cuts)


def test_window_sum_clips_to_the_array():
    from hpcffn.stages.partition_objects import window_sum

    a = np.random.default_rng(1).integers(0, 3, size=(9, 5, 4)).astype(np.uint8)
    for axis in (0, 1):
        for radius, centres in ((0, (0, 4)), (1, (1, 4)), (2, (0, 5)), (7, (2, 3))):
            got = window_sum(a, axis, radius, centres, np.uint16)
            src = np.moveaxis(a.astype(np.int64), axis, 0)
            want = np.stack([src[max(0, c - radius):c + radius + 1].sum(axis=0) for c in range(*centres)])
            np.testing.assert_array_equal(np.moveaxis(got, axis, 0), want)


def test_object_boxes_match_scipy_find_objects():
    from scipy.ndimage import find_objects

    from hpcffn.stages.partition_objects import object_boxes

    rng = np.random.default_rng(4)
    for _ in range(20):
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        k = int(rng.integers(1, 9))
        dense = rng.integers(0, k + 1, shape).astype(np.uint16)
        dense[dense == k] = 0  # label k absent: None, as find_objects says
        assert object_boxes(dense, k, slab_voxels=int(rng.integers(1, 300))) == find_objects(dense, max_label=k)


def test_partitions_do_not_import_scipy():
    """scipy.ndimage costs ~1 s to import: partitions without a mask must not need it."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from hpcffn.stages.partitions import compute_partitions\n"
            "seg = np.zeros((20, 20, 20), np.uint64); seg[:, :, 10:] = 5; seg[:, 4:8] = 2**40\n"
            "assert (compute_partitions(seg, (0.5,), (2, 2, 2), 10, threads=2) > 0).any()\n"
            "print(sorted(m for m in sys.modules if m.startswith('scipy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
