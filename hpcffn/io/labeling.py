"""Groundtruth polarity -> uint64 object ids, streamed in z slabs (stacks larger than memory).

Polarity (from the spec / --polarity):
  white   white background, black objects: a voxel is object when its value is below half of
          the dtype's range (uint8: < 128; bool: False; floats: < 0.5); objects = 3-D
          connected components.
  black   zero background: a voxel is object when non-zero; objects = connected components.
  labels  ids as they are (integer, >= 0, 0 = background).

Connected components in slabs: each slab is labelled with cc3d (provisional ids, unique
across slabs) and written to the output; the touching planes of consecutive slabs give the
pairs of provisional ids that are one object; a union-find over those pairs (graph
components with scipy) maps every provisional id to its final id, applied in a second pass
over the output. Final ids are numbered 1..N in the order objects first appear in a z,y,x
scan, so the result does not depend on the slab size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hpcffn.core.errors import HpcffnError

POLARITIES = ("white", "black", "labels")
CONNECTIVITIES = (6, 18, 26)


def foreground(slab: np.ndarray, polarity: str) -> np.ndarray:
    """Object voxels of a slab for `white` / `black` polarity."""
    if polarity == "black":
        return slab != 0
    if slab.dtype == bool:
        return ~slab
    if np.issubdtype(slab.dtype, np.integer):
        info = np.iinfo(slab.dtype)
        half = info.min + (int(info.max) - int(info.min) + 1) // 2
        return slab < half
    return slab < 0.5


def _plane_pairs(prev: np.ndarray, cur: np.ndarray, connectivity: int) -> np.ndarray:
    """(provisional id in prev, id in cur) for touching object voxels of two adjacent planes."""
    if connectivity == 6:
        offsets = [(0, 0)]
    elif connectivity == 18:
        offsets = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    else:
        offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    ny, nx = prev.shape
    pairs = []
    for dy, dx in offsets:
        a = prev[max(0, dy):ny + min(0, dy), max(0, dx):nx + min(0, dx)]
        b = cur[max(0, -dy):ny + min(0, -dy), max(0, -dx):nx + min(0, -dx)]
        both = (a != 0) & (b != 0)
        if both.any():
            pairs.append(np.stack([a[both], b[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.uint64)
    return np.unique(np.concatenate(pairs), axis=0)


def default_slab(shape, budget_bytes: int = 512 << 20) -> int:
    """Slices per slab so the working set (ids + labels + mask) stays near the budget."""
    plane = max(1, shape[1] * shape[2])
    return max(1, min(shape[0], budget_bytes // (plane * 24)))


def check_options(reader, polarity: str, connectivity: int) -> None:
    """Reject bad options from headers alone, so convert fails before streaming anything."""
    if polarity not in POLARITIES:
        raise HpcffnError(f"polarity {polarity!r} is not one of {', '.join(POLARITIES)}")
    if connectivity not in CONNECTIVITIES:
        raise HpcffnError(f"connectivity {connectivity} must be 6, 18 or 26")
    if polarity == "labels" and not (np.issubdtype(reader.dtype, np.integer) or reader.dtype == bool):
        raise HpcffnError(
            f"{reader.name}: polarity labels needs integer ids but the data is {reader.dtype}; "
            "use polarity white or black for masks"
        )


def label_volume(
    reader,
    write: Callable[[int, np.ndarray], None],
    read_back: Callable[[int, int], np.ndarray],
    polarity: str,
    connectivity: int = 6,
    slab: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Stream `reader` (tif.VolumeReader) into uint64 ids via write(z0, ids); returns object count.

    `read_back(z0, z1)` must return what was written (pass 2 relabels in place).
    """
    check_options(reader, polarity, connectivity)
    nz = reader.shape[0]
    slab = slab or default_slab(reader.shape)
    if polarity == "labels":
        # Objects are the distinct non-zero ids, not the largest id (16 objects numbered up to
        # 16000 are 16 objects).
        ids = np.zeros(0, np.uint64)
        for z0 in range(0, nz, slab):
            block = reader.read(z0, min(nz, z0 + slab))
            if np.issubdtype(block.dtype, np.signedinteger) and block.size and block.min() < 0:
                raise HpcffnError(f"{reader.name}: negative ids in slices {z0}..; ids must be >= 0")
            block = block.astype(np.uint64)
            write(z0, block)
            ids = np.union1d(ids, np.unique(block))
            if progress:
                progress(block.shape[0])
        return int(np.count_nonzero(ids))

    import cc3d

    base = 0
    prev_plane = None
    edges = []
    for z0 in range(0, nz, slab):
        block = reader.read(z0, min(nz, z0 + slab))
        mask = foreground(block, polarity)
        # On a line of voxels every connectivity is 6, and cc3d (4.1) raises for 26 on some lines.
        conn = connectivity if sum(s > 1 for s in mask.shape) > 1 else 6
        ids, n = cc3d.connected_components(mask, connectivity=conn, return_N=True, out_dtype=np.uint64)
        ids = ids.astype(np.uint64, copy=False)
        if base:
            ids[ids != 0] += np.uint64(base)
        if prev_plane is not None:
            edges.append(_plane_pairs(prev_plane, ids[0], connectivity))
        prev_plane = ids[-1].copy()
        write(z0, ids)
        base += int(n)
        if progress:
            progress(block.shape[0] / 2)
    lut = merge_ids(base, edges)
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        write(z0, lut[read_back(z0, z1)])
        if progress:
            progress((z1 - z0) / 2)
    return int(lut.max()) if len(lut) else 0


def merge_ids(n: int, edges: list[np.ndarray]) -> np.ndarray:
    """Lookup id -> merged id for ids 0..n joined by `edges` ((k, 2) id pairs): 1..K by first appearance; 0 stays 0."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate(edges) if edges else np.zeros((0, 2), dtype=np.uint64)
    pairs = pairs.astype(np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n + 1, n + 1))
    count, comp = connected_components(graph, directed=False)
    # Rank components by their first id (first appearance) with O(n) passes: np.unique's
    # hash/sort of every id took most of the time at 10^7 ids.
    ids = comp[1:]
    first = np.full(count, len(ids), dtype=np.int64)
    np.minimum.at(first, ids, np.arange(len(ids), dtype=np.int64))
    present = np.flatnonzero(first < len(ids))
    rank = np.zeros(count, dtype=np.uint64)
    rank[present[np.argsort(first[present], kind="stable")]] = np.arange(1, len(present) + 1, dtype=np.uint64)
    lut = np.zeros(n + 1, dtype=np.uint64)
    lut[1:] = rank[ids]
    return lut


def pair_counts(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None):
    """Distinct (a[i], b[i]) pairs of two equal-length id arrays and how often each occurs.

    Returns (a_ids, b_ids, counts), counts summing `weights` when given (to merge partial
    tables). Ids are ranked first, so any uint64 ids work without a 2-D unique.
    """
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    keys, which = np.unique(ia.astype(np.int64).ravel() * len(ub) + ib.ravel(), return_inverse=True)
    counts = np.bincount(which.ravel(), weights=weights, minlength=len(keys))
    if weights is None:
        counts = counts.astype(np.int64)
    return ua[keys // len(ub)], ub[keys % len(ub)], counts


# ---------------------------------------------------------------- is the polarity right?
#
# What tells a wrong polarity from right (measured on FIB-25 ts2_dev, white background, black
# objects, white one-voxel boundaries, 91% object voxels): with the right polarity dense
# groundtruth's objects are many separate 2-D regions (50-160 per 250x250 slice, the largest
# a quarter of the slice; in a 48x48 crop one body may fill 70%) with thin lines between them;
# with the polarity backwards the "objects" of a sparse mask are its background, one region
# over most of the slice around blobs; and dense groundtruth read backwards makes the
# one-voxel boundaries the objects: thin lines (over 80% of their voxels on an edge) that cut the
# other value into many regions. Object ids (more than two values) read as a mask do the first.

SAMPLES = 5
WRONG_POLARITY = 0.9  # objects this dense AND one region: the background taken for the objects
SUSPECT_POLARITY = 0.5
ONE_REGION = 0.5  # share of a set's voxels in each slice's largest 2-D region
THIN = 0.6  # share of object voxels with a 4-neighbour outside the objects


def pair_counts_where_both(a: np.ndarray, b: np.ndarray):
    """(a ids, b ids, common voxels, a's voxels, b's voxels) of the pairs that meet, all counted
    where BOTH segmented; None when they share no segmented voxel."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return None
    # A voxel one tile left unsegmented (near its faces a tile segments less: 17% against 6%
    # untiled on FIB-25, docs/real_data.md) is no disagreement.
    ua, ca = np.unique(a[both], return_counts=True)
    ub, cb = np.unique(b[both], return_counts=True)
    pa, pb, common = pair_counts(a[both], b[both])
    return pa, pb, common, ca[np.searchsorted(ua, pa)], cb[np.searchsorted(ub, pb)]


def sampled_planes(reader, samples: int = SAMPLES) -> list[np.ndarray]:
    """`samples` z slices of a reader (tif.VolumeReader), evenly spaced."""
    nz = reader.shape[0]
    zs = sorted({int(z) for z in np.linspace(0, nz - 1, min(samples, nz))}) if nz else []
    return [reader.read(z, z + 1)[0] for z in zs]


def _regions(masks: list[np.ndarray]) -> tuple[int, float]:
    """(regions per slice on average, share of the voxels in each slice's largest region), 4-connected."""
    from scipy import ndimage

    count = largest = total = 0
    for m in masks:
        ids, n = ndimage.label(m)
        count += n
        if n:
            largest += int(np.bincount(ids.ravel())[1:].max())
        total += int(m.sum())
    return round(count / max(len(masks), 1)), largest / max(total, 1)


def _edge_share(masks: list[np.ndarray]) -> float:
    """Share of object voxels that touch a non-object 4-neighbour inside the slice."""
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)
    inner = sum(int(ndimage.binary_erosion(m, cross, border_value=1).sum()) for m in masks)
    total = sum(int(m.sum()) for m in masks)
    return 1 - inner / max(total, 1)


def polarity_findings(slices: list[np.ndarray], polarity: str, src: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) about reading `slices` of groundtruth `src` as a `white`/`black` mask.

    Each is one line starting with the finding, ending with the fix; refusals are only for
    what a lab's data cannot mean: the background taken for one huge object, or the boundaries
    of dense groundtruth taken for the objects.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if polarity not in ("white", "black") or not slices:
        return errors, warnings
    other = "black" if polarity == "white" else "white"
    values = np.unique(np.concatenate([np.unique(s) for s in slices]))
    ids_like = slices[0].dtype != bool and np.issubdtype(slices[0].dtype, np.integer) and len(values) > 2
    sampled = f"{len(slices)} sampled slices of {src}"
    if ids_like:
        fix = (f"it holds {len(values)} distinct values, so these look like object ids, not a black/white mask: "
               "set polarity: labels")
    fg = [foreground(s, polarity) for s in slices]
    bg = [~m for m in fg]
    voxels = sum(m.size for m in fg)
    fraction = sum(int(m.sum()) for m in fg) / max(voxels, 1)
    if fraction == 0:
        return errors, warnings  # "no object voxels" is the caller's message
    fg_regions, fg_largest = _regions(fg)
    # One body can fill most of a small crop of dense groundtruth; what is left between its
    # objects is then still thin boundary lines, where a mask's real objects are blobs.
    boundaries_between = (not ids_like and fraction < 1 and fg_regions >= 3 and _edge_share(bg) >= THIN)
    if fraction > SUSPECT_POLARITY and fg_largest >= ONE_REGION and not boundaries_between:
        if not ids_like:
            fix = f"the background is probably {other}: set polarity: {other}"
        text = (f"with polarity {polarity} the objects cover {fraction:.0%} of {sampled}, mostly as one connected "
                f"region ({fg_largest:.0%} of them); {fix}")
        if fraction >= WRONG_POLARITY or ids_like:
            errors.append(text + ("" if ids_like else " (or fix the data)"))
        else:
            warnings.append(text + ("" if ids_like else " if so"))
        return errors, warnings
    bg_regions, bg_largest = _regions(bg)
    edge = _edge_share(fg)
    if fraction < SUSPECT_POLARITY and bg_largest < ONE_REGION and bg_regions > 2 and edge >= THIN:
        if not ids_like:
            fix = (f"these are the boundaries between the objects of dense groundtruth: set polarity: {other} "
                   "(the objects are then the regions between them)")
        errors.append(f"with polarity {polarity} the objects are thin lines ({edge:.0%} of their voxels on an edge, "
                      f"{fraction:.0%} of {sampled}) that cut the rest into ~{bg_regions} separate regions per slice; "
                      f"{fix}")
        return errors, warnings
    if fraction < SUSPECT_POLARITY and edge >= THIN and not ids_like:
        warnings.append(f"with polarity {polarity} the objects are thin lines ({edge:.0%} of their voxels on an edge, "
                        f"{fraction:.0%} of {sampled}): if they are the boundaries between the objects of dense "
                        f"groundtruth, set polarity: {other}")
    if ids_like:
        warnings.append(f"groundtruth {src} holds {len(values)} distinct values in {len(slices)} sampled slices: if "
                        f"they are object ids, set polarity: labels (read as a {polarity} mask, touching objects of "
                        "different ids become one)")
    return errors, warnings
