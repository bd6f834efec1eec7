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
