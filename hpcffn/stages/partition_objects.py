"""Stage 1's kernel: for one object, the number of its own voxels in each of its voxels' boxes.

Only the object's voxels are centres and only its voxels are counted, so nothing outside
its footprint is ever read: the work follows the object, not its box grown by the radius.
The box sums are separable running sums (two vector operations per output row), and long
or oblique objects are cut into z pieces, each trimmed to the footprint it actually has,
when that costs less than one piece over the whole bounding box.
"""

from __future__ import annotations

import numpy as np


def object_boxes(dense: np.ndarray, k: int, slab_voxels: int = 1 << 20) -> list:
    """Bounding box (z,y,x slices) of each label 1..k, None if absent: scipy's find_objects.

    From per-axis presence tables (coordinate x label) filled by bincounts over z slabs,
    which spares importing scipy.ndimage (~1 s) for most tiles; huge tables fall back to it.
    """
    n_labels = k + 1
    if n_labels * max(dense.shape) > (1 << 22):
        from scipy.ndimage import find_objects

        return find_objects(dense, max_label=k)
    present = [np.zeros(n * n_labels, dtype=bool) for n in dense.shape]
    step = max(1, slab_voxels // max(1, dense[0].size))
    ys = (np.arange(dense.shape[1], dtype=np.intp) * n_labels)[:, None]
    xs = np.arange(dense.shape[2], dtype=np.intp) * n_labels
    for z0 in range(0, dense.shape[0], step):
        slab = dense[z0:z0 + step].astype(np.intp)
        zs = (np.arange(z0, z0 + len(slab), dtype=np.intp) * n_labels)[:, None, None]
        for axis, coord in enumerate((zs, ys, xs)):
            present[axis] |= np.bincount((slab + coord).reshape(-1), minlength=present[axis].size) > 0
    extents = []
    for axis, n in enumerate(dense.shape):
        table = present[axis].reshape(n, n_labels)
        extents.append((table.argmax(axis=0), n - table[::-1].argmax(axis=0), table.any(axis=0)))
    return [
        tuple(slice(int(lo[label]), int(hi[label])) for lo, hi, _ in extents) if extents[0][2][label] else None
        for label in range(1, n_labels)
    ]


def window_sum(a: np.ndarray, axis: int, radius: int, centres: tuple[int, int], dtype) -> np.ndarray:
    """Sums of a[c - radius .. c + radius] along axis 0 or 1 (clipped to the array), c in centres.

    Clipping equals the full window when the array covers everything non-zero the windows
    reach. A running sum (add the row entering, subtract the row leaving) costs two vector
    operations per output row, where numpy's cumsum costs ~10 ns per element. Exact as long
    as every true sum fits `dtype` (unsigned wrap-around cancels out).
    """
    n = a.shape[axis]
    c0, c1 = centres
    shape = list(a.shape)
    shape[axis] = c1 - c0
    out = np.empty(shape, dtype)
    src, dst = np.moveaxis(a, axis, 0), np.moveaxis(out, axis, 0)
    np.sum(src[max(0, c0 - radius):c0 + radius + 1], axis=0, dtype=dtype, out=dst[0])
    for i, c in enumerate(range(c0 + 1, c1), start=1):
        if c + radius < n:
            np.add(dst[i - 1], src[c + radius], out=dst[i])
        else:
            dst[i] = dst[i - 1]
        if c - radius > 0:
            np.subtract(dst[i], src[c - radius - 1], out=dst[i])
    return out


def box_counts(obj: np.ndarray, rad, centres, dtypes) -> np.ndarray:
    """Voxels of the bool `obj` in the radius box around each centre (z,y,x index ranges).

    z rows, then y rows, then x after one transpose of the (smallest yet) y result, so every
    pass runs over whole rows. Returns x,z,y-ordered counts as a z,y,x view.
    """
    c = window_sum(obj.view(np.uint8), 0, int(rad[0]), centres[0], dtypes[0])
    c = window_sum(c, 1, int(rad[1]), centres[1], dtypes[1])
    c = np.ascontiguousarray(c.transpose(2, 0, 1))
    return window_sum(c, 0, int(rad[2]), centres[2], dtypes[2]).transpose(1, 2, 0)


def _span(flags: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of the true entries of a 1-D bool array ((0, 0) if none)."""
    hits = np.flatnonzero(flags)
    return (int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, 0)


# Fixed cost of one piece, in element operations (~1 ns each): the Python-level calls per row.
_ROW_COST = 3000


def _pieces(rows_y: np.ndarray, cols_x: np.ndarray, centres_z, inner_y, inner_x, rad) -> list:
    """Cheapest cut of centre rows into z pieces: [(z range, y/x input ranges, y/x centre ranges)].

    `rows_y`/`cols_x` say which y/x hold object voxels in each input row. A piece reads its
    centre rows plus the radius and, across, only the object's footprint over those rows
    (clipped to the centres' footprint plus the radius).
    """
    c0, c1 = centres_z
    rz = int(rad[0])
    best, best_cost = [], None
    # Candidates: one piece, or pieces of 4, 2 or 1 radius deep (at least 8 rows).
    for depth in sorted({c1 - c0, max(8, 4 * rz), max(8, 2 * rz), max(8, rz)}, reverse=True):
        plan, cost = [], 0
        for s0 in range(c0, c1, depth):
            s1 = min(c1, s0 + depth)
            i0, i1 = max(0, s0 - rz), min(len(rows_y), s1 + rz)
            ranges = []
            for table, inner, r in ((rows_y, inner_y, int(rad[1])), (cols_x, inner_x, int(rad[2]))):
                lo, hi = _span(table[s0:s1].any(axis=0))
                lo, hi = max(lo, inner[0]), min(hi, inner[1])
                if hi <= lo:
                    break
                ilo, ihi = _span(table[i0:i1].any(axis=0))
                ranges.append(((max(ilo, lo - r), min(ihi, hi + r)), (lo, hi)))
            if len(ranges) < 2:
                continue  # no centre of this piece is inside the computable interior
            (iy, cy), (ix, cx) = ranges
            d, ny, nx, nyc = s1 - s0, iy[1] - iy[0], ix[1] - ix[0], cy[1] - cy[0]
            cost += (i1 - i0) * ny * nx + 2 * d * nyc * nx + d * nyc * (cx[1] - cx[0])
            cost += _ROW_COST * (d + ny + nx)
            plan.append(((s0, s1), (i0, i1), iy, ix, cy, cx))
        if best_cost is None or cost < best_cost:
            best, best_cost = plan, cost
    return best


class ObjectPartitioner:
    """Writes partition values of one dense label at a time into `out` (zeros where computable).

    Objects own disjoint voxels, so several threads may run `partition` on different labels.
    """

    def __init__(self, dense: np.ndarray, out: np.ndarray, lut: np.ndarray, rad, piece_voxels: int):
        self.dense, self.out, self.lut = dense, out, lut
        self.rad = tuple(int(r) for r in rad)
        self.piece_voxels = piece_voxels
        diam = [2 * r + 1 for r in self.rad]
        self.dtypes = (_uint_for(diam[0]), _uint_for(diam[0] * diam[1]), _uint_for(diam[0] * diam[1] * diam[2]))

    def partition(self, label: int, box) -> None:
        """All of `label`'s voxels inside `box` (its bounding box) that lie in the interior."""
        shape, rad = self.dense.shape, self.rad
        lo = [s.start for s in box]
        hi = [s.stop for s in box]
        inner = [(max(a, r), min(b, n - r)) for a, b, n, r in zip(lo, hi, shape, rad)]
        if any(b <= a for a, b in inner):
            return
        # Chunks of centre rows (each with its radius halo) keep the mask near `piece_voxels`.
        plane = (hi[1] - lo[1]) * (hi[2] - lo[2])
        depth = max(1, self.piece_voxels // max(1, plane) - 2 * rad[0])
        for z0 in range(inner[0][0], inner[0][1], depth):
            self._chunk(label, lo, hi, inner, z0, min(inner[0][1], z0 + depth))

    def _chunk(self, label: int, lo, hi, inner, z0: int, z1: int) -> None:
        rad = self.rad
        zlo, zhi = max(lo[0], z0 - rad[0]), min(hi[0], z1 + rad[0])
        obj = self.dense[zlo:zhi, lo[1]:hi[1], lo[2]:hi[2]] == label
        inner_y = (inner[1][0] - lo[1], inner[1][1] - lo[1])
        inner_x = (inner[2][0] - lo[2], inner[2][1] - lo[2])
        pieces = _pieces(obj.any(axis=2), obj.any(axis=1), (z0 - zlo, z1 - zlo), inner_y, inner_x, rad)
        for (s0, s1), (i0, i1), iy, ix, cy, cx in pieces:
            sub = obj[i0:i1, iy[0]:iy[1], ix[0]:ix[1]]
            centres = ((s0 - i0, s1 - i0), (cy[0] - iy[0], cy[1] - iy[0]), (cx[0] - ix[0], cx[1] - ix[0]))
            counts = box_counts(sub, rad, centres, self.dtypes)
            target = self.out[zlo + s0:zlo + s1, lo[1] + cy[0]:lo[1] + cy[1], lo[2] + cx[0]:lo[2] + cx[1]]
            sel = sub[tuple(slice(*c) for c in centres)] & (target == 0)
            target[sel] = self.lut[counts[sel]]


def _uint_for(limit: int):
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if limit <= np.iinfo(dt).max:
            return dt
    raise ValueError("window too large")
