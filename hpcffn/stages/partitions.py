"""Stage 1: FFN's partition map (what Google's compute_partitions.py computes), per object.

Definition (Google's, matched exactly): objects smaller than `min_size` voxels become
background (0). For every voxel of an object whose whole (2r+1)-box lies inside the array,
the fraction f of the box's voxels carrying the same id is quantized: value i+1 for the first
threshold with f < threshold, len(thresholds)+1 when f >= the last one. Background is 0.
Voxels closer than the radius to the array border cannot be computed and are 255 (the
output keeps the input's shape; Google fills them with 255 too), as are excluded voxels.

FFN loops over every id with full-volume passes (cost: volume x objects). Here each object is
processed only where it has voxels (hpcffn.stages.partition_objects), with separable running
sums in modular small integers, and the count -> class mapping is a lookup table computed with
the very same float64 division Google uses, so the values are identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.stages.partition_objects import ObjectPartitioner, object_boxes

EXCLUDED = 255


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def class_table(thresholds: Sequence[float], fov_volume: int) -> np.ndarray:
    """Partition value for every possible same-id count 0..fov_volume (uint8)."""
    th = np.asarray([float(t) for t in thresholds], dtype=np.float64)
    fraction = np.arange(fov_volume + 1, dtype=np.int64) / np.int64(fov_volume)
    return (np.searchsorted(th, fraction, side="right") + 1).astype(np.uint8)


def _bincount(values: np.ndarray, minlength: int = 0, chunk: int = 1 << 20) -> np.ndarray:
    """np.bincount in chunks: bincount casts its input to int64, 8x the memory of uint8 data
    (small chunks also keep that copy in cache)."""
    flat = values.reshape(-1)
    counts = np.zeros(minlength, dtype=np.int64)
    for i in range(0, flat.size, chunk):
        part = np.bincount(flat[i:i + chunk], minlength=minlength)
        if len(part) > len(counts):
            part[: len(counts)] += counts
            counts = part
        else:
            counts[: len(part)] += part
    return counts


def _dense_objects(seg: np.ndarray, min_size: int) -> tuple[np.ndarray, int]:
    """Relabel to 1..K (0 = background or dust), dropping objects below min_size (FFN clear_dust)."""
    flat = seg.reshape(-1)
    top = int(flat.max()) if flat.size else 0
    if top < (1 << 26) and top <= 4 * flat.size:
        counts = _bincount(flat, minlength=top + 1)
        ids = np.flatnonzero(counts)
        counts = counts[ids]
        inverse = None
    else:  # sparse, huge ids: sort once
        ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    keep = (counts >= min_size) & (ids != 0)
    k = int(keep.sum())
    dtype = np.uint16 if k < (1 << 16) else np.uint32
    new = np.zeros(len(ids), dtype=dtype)
    new[keep] = np.arange(1, k + 1, dtype=dtype)
    if inverse is None:
        lut = np.zeros(top + 1, dtype=dtype)
        lut[ids] = new
        # Slab by slab: fancy indexing casts the whole index array to int64 otherwise.
        dense = np.empty(seg.shape, dtype=dtype)
        step = max(1, (1 << 20) // max(1, seg[0].size))
        for z in range(0, seg.shape[0], step):
            dense[z:z + step] = lut[seg[z:z + step]]
    else:
        dense = new[inverse].reshape(seg.shape)
    return dense, k


def exclusion_mask(shape, regions: Iterable[Sequence[float]]) -> np.ndarray | None:
    """Voxels inside any sphere (x, y, z, r) given in the array's own coordinates."""
    regions = list(regions or [])
    if not regions:
        return None
    mask = np.zeros(shape, dtype=bool)
    zz, yy, xx = (np.arange(n) for n in shape)
    for x, y, z, r in regions:
        d2 = (
            (zz[:, None, None] - z) ** 2 + (yy[None, :, None] - y) ** 2 + (xx[None, None, :] - x) ** 2
        )
        mask |= d2 <= r * r
    return mask


def compute_partitions(
    seg: np.ndarray,
    thresholds: Sequence[float],
    lom_radius_xyz: Sequence[int],
    min_size: int,
    exclusion_regions: Iterable[Sequence[float]] | None = None,
    threads: int | None = None,
    piece_voxels: int = 1 << 24,
    id_whitelist: Iterable[int] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Partition map of a labelled z,y,x array: uint8, same shape, 255 border of the radius.

    With `id_whitelist`, objects not listed keep value 0, as background does (FFN's flag):
    a fraction counts only the centre object's own voxels, so dropping them first is the same.
    With `mask` (true = masked), every voxel whose local-object-mask box holds a masked voxel
    is 255, as FFN's mask_configs do.
    """
    if seg.ndim != 3:
        raise HpcffnError(f"groundtruth has {seg.ndim} dimensions, expected 3 (z,y,x)")
    if not np.issubdtype(seg.dtype, np.integer):
        raise HpcffnError(f"groundtruth has dtype {seg.dtype}; it must hold integer object ids")
    if np.issubdtype(seg.dtype, np.signedinteger):
        if seg.size and seg.min() < 0:
            raise HpcffnError("groundtruth holds negative ids; ids must be >= 0 (0 = background)")
        seg = seg.astype(np.uint64)
    if id_whitelist is not None:
        seg = np.where(np.isin(seg, np.asarray(list(id_whitelist), dtype=np.uint64)), seg, 0).astype(seg.dtype, copy=False)
    rad = np.array([int(r) for r in lom_radius_xyz][::-1])  # z,y,x
    diam = 2 * rad + 1
    fov = int(np.prod(diam))
    lut = class_table(thresholds, fov)
    shape = tuple(int(n) for n in seg.shape)

    out = np.full(seg.shape, EXCLUDED, dtype=np.uint8)
    if any(n - 2 * r <= 0 for n, r in zip(shape, rad)):
        return out
    inner = tuple(slice(r, n - r) for r, n in zip(rad, shape))
    out[inner] = 0
    excl = exclusion_mask(seg.shape, exclusion_regions)
    if excl is not None:
        out[excl] = EXCLUDED
    if mask is not None:
        if mask.shape != seg.shape:
            raise HpcffnError(f"mask shape {mask.shape} differs from the groundtruth shape {seg.shape}: give a mask of the same volume")
        from scipy.ndimage import maximum_filter

        near = maximum_filter(mask.astype(np.uint8, copy=False), size=tuple(int(d) for d in diam), mode="constant")
        out[inner][near[inner] > 0] = EXCLUDED

    dense, k = _dense_objects(seg, min_size)
    if k == 0:
        return out
    boxes = object_boxes(dense, k)
    kernel = ObjectPartitioner(dense, out, lut, rad, piece_voxels)

    def one(label: int) -> None:
        kernel.partition(label, boxes[label - 1])

    # Largest boxes first, so the threads finish together.
    labels = sorted((i + 1 for i, b in enumerate(boxes) if b is not None),
                    key=lambda i: -np.prod([s.stop - s.start for s in boxes[i - 1]], dtype=np.int64))
    workers = threads or _cpu_count()
    if workers > 1 and len(labels) > 1:
        # Objects own disjoint voxels, so threads never write the same output element.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(one, labels):
                pass
    else:
        for label in labels:
            one(label)
    return out


def write_partitions(
    path: Path,
    dataset: str,
    af: np.ndarray,
    *,
    offset=(0, 0, 0),
    lom_radius_xyz=(0, 0, 0),
    thresholds=(),
    min_size: int = 0,
    bounding_boxes=None,
) -> None:
    """Write `af` with FFN's attributes (bounding_boxes, partition_counts) plus ours, atomically."""
    import h5py

    from hpcffn.io.volumes import atomic_h5

    path = Path(path)
    if path.exists():
        try:
            with h5py.File(path, "r") as fh:
                from hpcffn.io.volumes import list_datasets

                others = [d for d in list_datasets(fh) if d != dataset]
        except OSError:
            raise HpcffnError(f"{path} exists and is not an HDF5 file; choose another --output") from None
        if others:
            raise HpcffnError(
                f"{path} already holds other datasets ({', '.join(others[:5])}); "
                "write the partitions to a file of their own"
            )
    rad = np.array([int(r) for r in lom_radius_xyz])
    shape_xyz = np.array(af.shape[::-1])
    boxes = bounding_boxes if bounding_boxes is not None else [((0, 0, 0), tuple(shape_xyz))]
    adjusted = []
    for start, size in boxes:
        start = np.asarray(start) + rad
        size = np.asarray(size) - 2 * rad
        if np.all(size > 0):
            adjusted.append((start, size))
    rad_zyx = rad[::-1]
    interior = af[tuple(slice(r, n - r) for r, n in zip(rad_zyx, af.shape))]
    hist = _bincount(np.ascontiguousarray(interior), minlength=256)
    values = np.flatnonzero(hist)
    counts = hist[values]
    with atomic_h5(path) as fh:
        chunks = tuple(min(64, max(1, n)) for n in af.shape)
        ds = fh.create_dataset(dataset, data=af, chunks=chunks, compression="gzip", compression_opts=1)
        ds.attrs["offset"] = np.asarray(offset, dtype=np.int64)
        ds.attrs["bounding_boxes"] = np.asarray(adjusted, dtype=np.int64).reshape(-1, 2, 3)
        ds.attrs["partition_counts"] = np.array([values.astype(np.int64), counts])
        ds.attrs["lom_radius"] = rad
        ds.attrs["thresholds"] = np.asarray(thresholds, dtype=np.float64)
        ds.attrs["min_size"] = int(min_size)


def input_bounding_boxes(ds) -> list | None:
    """FFN's `bounding_boxes*` attributes of an input dataset (x,y,z start, size), if any."""
    boxes = []
    for name, value in ds.attrs.items():
        if name.startswith("bounding_boxes"):
            for b in np.asarray(value).reshape(-1, 2, 3):
                boxes.append((tuple(int(v) for v in b[0]), tuple(int(v) for v in b[1])))
    return boxes or None


def partitions_standalone(
    input_loc: str,
    output_loc: str,
    thresholds,
    lom_radius_xyz,
    min_size: int,
    exclusion_regions=None,
    id_whitelist=None,
    mask_loc: str | None = None,
) -> dict:
    """`hpcffn stage partitions --input gt.h5:stack --output af.h5:af` (FFN's flags)."""
    from hpcffn.io.volumes import open_dataset, parse_location

    src = parse_location(input_loc, "stack")
    dst = parse_location(output_loc, "af")
    with open_dataset(src) as ds:
        if ds.ndim != 3:
            raise HpcffnError(f"{src}: dataset has {ds.ndim} dimensions, expected 3 (z,y,x)")
        shape = ds.shape
        offset = tuple(int(v) for v in ds.attrs.get("offset", (0, 0, 0)))
        boxes = input_bounding_boxes(ds)
    seg = read_labels_compact(src, (0, 0, 0), shape)  # uint32 where the ids fit: half the memory
    mask = None
    if mask_loc is not None:
        with open_dataset(parse_location(mask_loc, "mask")) as mds:
            mask = mds[...] != 0
    af = compute_partitions(seg, thresholds, lom_radius_xyz, min_size, exclusion_regions, id_whitelist=id_whitelist,
                            mask=mask)
    write_partitions(
        dst.path, dst.dataset, af, offset=offset, lom_radius_xyz=lom_radius_xyz,
        thresholds=thresholds, min_size=min_size, bounding_boxes=boxes,
    )
    return summarize(af)


def summarize(af: np.ndarray) -> dict:
    """Voxels per partition value."""
    hist = _bincount(af, minlength=256)
    return {int(v): int(hist[v]) for v in np.flatnonzero(hist)}


def read_labels_compact(location: str, start, size, slab_voxels: int = 1 << 23) -> np.ndarray:
    """A z,y,x box of a label dataset in the narrowest of uint32/uint64 that holds its ids.

    The stack is uint64 on disk; a 500^3 tile is 1 GB as uint64 but 500 MB as uint32, and
    ids rarely need more than 32 bits. Read in z slabs so no full uint64 copy exists.
    """
    from hpcffn.io.volumes import open_dataset, read_box

    with open_dataset(location, "stack") as ds:
        stop = [a + n for a, n in zip(start, size)]
        wide = ds.ndim == 3 and np.issubdtype(ds.dtype, np.integer) and ds.dtype.itemsize > 4
        inside = ds.ndim == 3 and all(a >= 0 for a in start) and all(e <= d for e, d in zip(stop, ds.shape))
        if wide and inside:
            out = np.empty(tuple(size), dtype=np.uint32)
            step = max(1, slab_voxels // max(1, size[1] * size[2]))
            for z in range(0, size[0], step):
                block = ds[start[0] + z:start[0] + min(size[0], z + step), start[1]:stop[1], start[2]:stop[2]]
                if block.size and (block.max() > np.iinfo(np.uint32).max or block.min() < 0):
                    break  # ids need 64 bits: read the box as it is
                out[z:z + len(block)] = block
            else:
                return out
    # Narrow dtypes, or boxes outside the dataset (read_box explains the error).
    return read_box(location, start, size, "stack")


def run_from_plan(plan, tile_key, params=None) -> dict:
    """Partitions of one tile: its box of the volume's groundtruth -> workdir/partitions/<tile>.h5."""
    from hpcffn.stages.markers import hold_unit, mark_done

    tile = plan.tile(plan.task_unit("partitions", tile_key))
    vol = plan.volume(tile.volume)
    if vol.groundtruth is None:
        raise HpcffnError(
            f"tile {tile.name}: volume {vol.name} has no groundtruth, so it has no partitions; "
            "only tiles with a group are partitioned"
        )
    out = plan.layout.partitions(tile.name)
    with hold_unit(plan, "partitions", tile.name, (out,)):
        p = params or plan.ffn.partitions
        seg = read_labels_compact(vol.groundtruth, tile.box.start, tile.box.size)
        mask = None
        if vol.mask:
            from hpcffn.io.volumes import read_box

            mask = read_box(vol.mask, tile.box.start, tile.box.size, "mask") != 0
        af = compute_partitions(seg, p.thresholds, p.lom_radius, p.min_size, id_whitelist=p.id_whitelist, mask=mask)
        write_partitions(
            out, "af", af, offset=tile.box.start,
            lom_radius_xyz=p.lom_radius, thresholds=p.thresholds, min_size=p.min_size,
        )
        counts = summarize(af)
        mark_done(plan, "partitions", tile.name, counts={str(k): v for k, v in counts.items()})
    return counts
