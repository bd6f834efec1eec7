"""FFN's split consensus of two segmentations of the same box (ffn/inference/consensus.py).

Two inference passes that seed in opposite orders rarely make the same false merge: a merge
of the forward pass is split wherever the reverse pass saw two objects. FFN's rule
(segmentation.split_segmentation_by_intersection), applied here to `a` (forward) and `b`
(reverse):

- every distinct (a id, b id) pair of voxels is one piece of the output;
- for each a id, the piece with its largest overlap (ties: the smallest b id, 0 included)
  keeps the a id; every other piece gets a new id above a's largest, numbered in the order of
  (b id, a id);
- pieces with a id 0 become 0; (a id, 0) pieces are kept like any other;
- pieces smaller than `min_size` voxels become 0 (the largest one included).

`small="forward"` (hpcffn's, not FFN's) gives pieces below `min_size` back their forward id
instead of 0: only disagreements of at least `min_size` voxels split a segment, and consensus
leaves no new holes (which a metric that counts 0 as a segment charges as a merge).

Computed in two streaming passes over z-slabs (count the pairs, then relabel), so a 500^3
tile never needs more than a few slab-sized arrays beyond the pair table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcffn.io.labeling import pair_counts

SLAB_VOXELS = 1 << 22  # voxels per z-slab: np.unique makes a few int64 copies of one (~200 MB at the peak)


@dataclass
class Relabelling:
    """The consensus as a table: distinct (a, b) pairs, their voxel counts and output ids."""

    a: np.ndarray  # uint64
    b: np.ndarray  # uint64
    count: np.ndarray  # int64
    label: np.ndarray  # uint64, 0 = removed

    @property
    def kept(self) -> np.ndarray:
        """The a ids that survive under their own id (their origins stay valid)."""
        return np.unique(self.label[(self.label == self.a) & (self.label > 0)])

    @property
    def segments(self) -> int:
        return int(np.count_nonzero(np.unique(self.label)))


def _slabs(shape, slab: int | None):
    step = slab or max(1, SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    for z0 in range(0, shape[0], step):
        yield slice(z0, min(shape[0], z0 + step))


def count_pairs(a, b, slab: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (a, b) id pairs over two equal-shape volumes (numpy arrays or h5py datasets)
    and their voxel counts, sorted by (a, b)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"segmentations differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    parts = []
    for zs in _slabs(a.shape, slab):
        parts.append(pair_counts(np.asarray(a[zs], np.uint64).ravel(), np.asarray(b[zs], np.uint64).ravel()))
        if len(parts) > 16:
            parts = [_merge(parts)]
    if not parts:
        empty = np.zeros(0, np.uint64)
        return empty, empty, np.zeros(0, np.int64)
    pa, pb, c = _merge(parts) if len(parts) > 1 else parts[0]
    order = np.lexsort((pb, pa))
    return pa[order], pb[order], c[order].astype(np.int64)


def _merge(parts):
    pa, pb, c = (np.concatenate(p) for p in zip(*parts))
    pa, pb, c = pair_counts(pa, pb, weights=c.astype(np.float64))
    return pa, pb, np.rint(c).astype(np.int64)


def split_labels(pa: np.ndarray, pb: np.ndarray, count: np.ndarray, min_size: int, small: str = "drop") -> Relabelling:
    """FFN's output id of every (a, b) pair (see the module docstring); `small`: drop or forward."""
    if small not in ("drop", "forward"):
        raise ValueError(f"small pieces: drop or forward, not {small!r}")
    pa = np.asarray(pa, np.uint64)
    pb = np.asarray(pb, np.uint64)
    count = np.asarray(count, np.int64)
    label = np.zeros(len(pa), np.uint64)
    if not len(pa):
        return Relabelling(pa, pb, count, label)
    # each a id's largest overlap: sort by a, then count descending, then b ascending
    by_a = np.lexsort((pb, -count, pa))
    first = np.ones(len(by_a), bool)
    first[1:] = pa[by_a[1:]] != pa[by_a[:-1]]
    largest = np.zeros(len(pa), bool)
    largest[by_a[first]] = True
    tiny = count < min_size
    if small == "forward":  # small pieces go back to their forward segment
        removed = pa == 0
        keep = ~removed & (largest | tiny)
    else:  # FFN's: small pieces become 0
        removed = tiny | (pa == 0)
        keep = largest & ~removed
    label[keep] = pa[keep]
    fresh = ~removed & ~keep
    # new ids above a's largest, in FFN's iteration order: (b, a) ascending
    order = np.lexsort((pa, pb))
    fresh_in_order = order[fresh[order]]
    label[fresh_in_order] = pa.max() + np.arange(1, len(fresh_in_order) + 1, dtype=np.uint64)
    return Relabelling(pa, pb, count, label)


def apply_labels(table: Relabelling, a, b, out, slab: int | None = None) -> None:
    """Write every voxel's output id into `out` (numpy array or writable h5py dataset), slab by slab."""
    ua = np.unique(table.a)
    ub = np.unique(table.b)
    keys = np.searchsorted(ua, table.a).astype(np.int64) * len(ub) + np.searchsorted(ub, table.b)
    order = np.argsort(keys)
    keys, labels = keys[order], table.label[order]
    for zs in _slabs(a.shape, slab):
        sa = np.asarray(a[zs], np.uint64)
        k = np.searchsorted(ua, sa).astype(np.int64)
        k *= len(ub)
        k += np.searchsorted(ub, np.asarray(b[zs], np.uint64))
        out[zs] = labels[np.searchsorted(keys, k)]


def split_consensus(a, b, min_size: int = 1000, out=None, slab: int | None = None, small: str = "drop"):
    """FFN's split consensus of `a` by `b`; returns (out, table). `out` defaults to a new uint64 array."""
    table = split_labels(*count_pairs(a, b, slab), min_size, small)
    if out is None:
        out = np.zeros(a.shape, np.uint64)
    apply_labels(table, a, b, out, slab)
    return out, table
