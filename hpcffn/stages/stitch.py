"""Stitching: one segmentation per volume from the overlapping segmentations of its tiles.

Inference segments every tile on its own (its infer box: the tile's box plus the overlap), so
an object that crosses tiles gets a different id in each. Stitching gives each tile's ids a
range of their own, joins two segments of neighbouring tiles where they agree on the voxels
both tiles segmented (the intersection of their infer boxes), and writes the voxels each
tile owns, relabelled 1..K, into one `seg` dataset the size of the volume.

Two segments a, b of neighbouring tiles are joined when, inside the shared region, they
cover at least `min_overlap_voxels` common voxels and that is at least
`min_overlap_fraction` of the larger of the two there (`fraction_of: larger`), both counted where
both tiles segmented (what one tile left unsegmented is not a disagreement). Measuring against
the larger one keeps a merge error in one tile from spreading: a segment that wrongly holds two
objects agrees well with at most one of the neighbour's. But a body that one tile split in two
is then joined only through its larger piece: the other stays split at the face.
`fraction_of: smaller` joins every piece that lies mostly inside the neighbour's segment, and so
also spreads a tile's merge; `fraction_of: owner` lets the tile that owns each part of the shared
region decide there (owner_pairs), which spreads merges too (docs/real_data.md measures all
three on FIB-25; `larger` is the default).

With `fill_gaps` (the default) a voxel a tile left unsegmented in the part it owns takes the
segment of the first neighbour (plan order) whose infer box covers it and that segmented it:
near its faces a tile sees less image and leaves more unsegmented (see gap_fill_ids).

Memory stays bounded: tiles are read in z-slabs of SLAB_VOXELS, and only the shared regions
(one pair at a time) are read whole for the comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import StitchParams
from hpcffn.core.plan_model import Plan
from hpcffn.io.labeling import merge_ids, pair_counts_where_both
from hpcffn.io.volumes import Location, open_dataset, parse_location, segmentation_box

SLAB_VOXELS = 8 * 2**20  # voxels read at a time (64 MB of uint64 ids): 26 slices of a 564^2 tile


@dataclass(frozen=True)
class TileSegmentation:
    """One tile's inference output: where it lies (its infer box) and the part it owns (core)."""

    name: str
    location: Location
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    core_start: tuple[int, int, int]
    core_size: tuple[int, int, int]

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(s + n for s, n in zip(self.start, self.size))  # type: ignore[return-value]


def grid_cores(boxes: list[tuple[tuple, tuple]], names: list[str]) -> list[tuple[tuple, tuple]]:
    """The part each box owns when boxes form an overlapping grid: overlaps are split in the middle.

    For standalone use, where no plan says which voxels each tile owns.
    """
    cores: list[list[tuple[int, int]]] = [[] for _ in boxes]
    for axis in range(3):
        intervals = sorted({(b[0][axis], b[0][axis] + b[1][axis]) for b in boxes})
        for (s0, e0), (s1, e1) in pairwise(intervals):
            if s1 == s0 or e1 <= e0:
                raise HpcffnError(f"segmentations {', '.join(names)} do not form a grid along axis {'zyx'[axis]} "
                                  f"(extents {s0}..{e0} and {s1}..{e1} nest): give the tiles of one plan")
            if s1 > e0:
                raise HpcffnError(f"segmentations leave a gap along axis {'zyx'[axis]} between {e0} and {s1}: "
                                  "give every tile of the volume")
        cuts = [(e0 + s1) // 2 for (_, e0), (s1, _) in pairwise(intervals)]
        bounds = [intervals[0][0], *cuts, intervals[-1][1]]
        own = {iv: (bounds[k], bounds[k + 1]) for k, iv in enumerate(intervals)}
        for i, b in enumerate(boxes):
            cores[i].append(own[(b[0][axis], b[0][axis] + b[1][axis])])
    return [(tuple(a for a, _ in c), tuple(e - a for a, e in c)) for c in cores]


def _slabs(tile: TileSegmentation, start, size):
    """Read the box (start, size; volume coordinates, inside the tile) of a tile in z-slabs."""
    with open_dataset(tile.location) as ds:
        rel = [s - t for s, t in zip(start, tile.start)]
        slab = max(1, SLAB_VOXELS // max(1, size[1] * size[2]))
        for z in range(0, size[0], slab):
            z1 = min(size[0], z + slab)
            yield z, ds[rel[0] + z:rel[0] + z1, rel[1]:rel[1] + size[1], rel[2]:rel[2] + size[2]]


def read_box(tile: TileSegmentation, start, size) -> np.ndarray:
    """The box (start, size; volume coordinates, inside the tile) of a tile's segmentation."""
    return np.concatenate([block for _, block in _slabs(tile, start, size)])


def agreeing_pairs(a: np.ndarray, b: np.ndarray, params: StitchParams) -> np.ndarray:
    """(k, 2) pairs of ids (a's, b's) that segment the same object in the shared region a/b
    under `fraction_of: larger | smaller` (the owner rule needs the tiles: owner_pairs)."""
    return _agreeing(pair_counts_where_both(a, b), params)


def _agreeing(found, params: StitchParams) -> np.ndarray:
    """agreeing_pairs from the region's pair counts (pair_counts_where_both; None: no pair)."""
    if found is None:
        return np.zeros((0, 2), np.uint64)
    pa, pb, common, size_a, size_b = found
    reference = np.minimum(size_a, size_b) if params.fraction_of == "smaller" else np.maximum(size_a, size_b)
    keep = (common >= params.min_overlap_voxels) & (common >= params.min_overlap_fraction * reference)
    return np.stack([pa[keep], pb[keep]], axis=1).astype(np.uint64)


def guest_pairs(guest: np.ndarray, owner: np.ndarray, params: StitchParams) -> np.ndarray:
    """(k, 2) pairs (guest id, owner id) where a guest segment lies mostly (min_overlap_fraction of
    its voxels where both segmented) inside one owner segment: the `owner` rule in voxels `owner` owns."""
    found = pair_counts_where_both(guest, owner)
    if found is None:
        return np.zeros((0, 2), np.uint64)
    pg, po, common, size_g, _ = found
    keep = (common >= params.min_overlap_voxels) & (common >= params.min_overlap_fraction * size_g)
    return np.stack([pg[keep], po[keep]], axis=1).astype(np.uint64)


def owner_pairs(t: TileSegmentation, u: TileSegmentation, box, a: np.ndarray, b: np.ndarray,
                params: StitchParams) -> np.ndarray:
    """`fraction_of: owner`: (t id, u id) pairs judged in the part of the shared region each tile owns.

    The stitched volume shows each voxel as the tile that owns it segmented it, so there that
    tile decides: the neighbour's segment joins the owner's segment it mostly lies in. A piece a
    tile split off near its face (where it sees less image) joins the body its neighbour holds
    whole, and a merge joins across the face only where the tile that made it owns the voxels,
    as it shows there anyway. min_overlap_voxels counts in each owner's part: counted over the
    whole shared region it let slivers join (ts2_dev: VI -2.4% instead of -5.5% against untiled).
    """
    found = []
    for owner, flip in ((u, False), (t, True)):
        lo = [max(s, c) for s, c in zip(box[0], owner.core_start)]
        hi = [min(s + n, c + m) for s, n, c, m in zip(box[0], box[1], owner.core_start, owner.core_size)]
        if any(h <= l for l, h in zip(lo, hi)):
            continue
        part = tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, box[0]))
        pairs = guest_pairs(b[part], a[part], params) if flip else guest_pairs(a[part], b[part], params)
        found.append(pairs[:, ::-1] if flip else pairs)
    if not found:
        return np.zeros((0, 2), np.uint64)
    return np.unique(np.concatenate(found), axis=0).astype(np.uint64)


def meet(start, size, other_start, other_size):
    """The box (start, size) two boxes share; None when they do not meet."""
    lo = tuple(max(a, b) for a, b in zip(start, other_start))
    hi = tuple(min(a + n, b + m) for a, n, b, m in zip(start, size, other_start, other_size))
    return (lo, tuple(h - a for a, h in zip(lo, hi))) if all(h > a for a, h in zip(lo, hi)) else None


def intersection(t: TileSegmentation, u: TileSegmentation):
    return meet(t.start, t.size, u.start, u.size)


def tile_ids(t: TileSegmentation) -> tuple[int, np.ndarray]:
    """A tile's largest id (its id range) and the sorted ids in the part it owns: one read of the tile."""
    biggest, own = 0, []
    rel = [c - s for c, s in zip(t.core_start, t.start)]  # the core inside the tile
    for z, block in _slabs(t, t.start, t.size):
        biggest = max(biggest, int(block.max()) if block.size else 0)
        z0, z1 = max(rel[0] - z, 0), min(rel[0] + t.core_size[0] - z, len(block))
        if z0 < z1:
            core = block[z0:z1, rel[1]:rel[1] + t.core_size[1], rel[2]:rel[2] + t.core_size[2]]
            own.append(np.unique(core[core > 0]))
    return biggest, (np.unique(np.concatenate(own)).astype(np.uint64) if own else np.zeros(0, np.uint64))


# Gap filling (StitchParams.fill_gaps). FFN leaves voxels near a tile's faces unsegmented much
# more often than deep inside (it sees less image there), and the neighbour whose infer box
# reaches over them often segmented them. So each 0 voxel of a tile's core takes the id of the
# first neighbour, in plan tile order, that covers it and segmented it, mapped through the lookup
# table like any id of that neighbour. gap_fill_ids finds those ids before the numbering (they own
# voxels: global_ids must number them, and only them); fill_gaps writes them. The single task and
# the joins/resolve/relabel steps both use these two, so their volumes agree voxel for voxel.


def fill_neighbours(t: TileSegmentation, tiles: list[TileSegmentation]) -> list[int]:
    """Indices of the `tiles` (plan order) other than t whose infer box reaches into t's core."""
    return [k for k, u in enumerate(tiles) if u.name != t.name and meet(t.core_start, t.core_size, u.start, u.size)]


def _inside(box, start) -> tuple[slice, ...]:
    """Where `box` (volume coordinates) lies in an array that starts at `start`."""
    return tuple(slice(a - o, a - o + n) for a, n, o in zip(box[0], box[1], start))


def gap_fill_ids(t: TileSegmentation, neighbours: list[TileSegmentation]) -> list[np.ndarray]:
    """For each of `neighbours` (plan order): the sorted ids with which it fills gaps in t's core.

    One region (t's core inside the neighbour's infer box) at a time: the voxels t left 0 there,
    less those an earlier neighbour segmented (its part of the region read in turn), are the
    neighbour's to fill. Memory: one region and a mask of it.
    """
    found = []
    for k, u in enumerate(neighbours):
        box = meet(t.core_start, t.core_size, u.start, u.size)
        gaps = read_box(t, *box) == 0 if box is not None else np.zeros(0, bool)
        for v in neighbours[:k]:
            part = meet(*box, v.start, v.size) if gaps.any() else None
            if part is not None:
                gaps[_inside(part, box[0])] &= read_box(v, *part) == 0
        ids = read_box(u, *box)[gaps] if gaps.any() else np.zeros(0, np.uint64)
        found.append(np.unique(ids[ids > 0]).astype(np.uint64))
    return found


def fill_gaps(out: np.ndarray, start, neighbours: list[tuple[TileSegmentation, Callable]]) -> None:
    """Fill the 0 voxels of `out` (a block of final ids at volume `start`) in place from
    `neighbours`: (tile, its ids -> final ids), in plan order, each where it covers and segmented."""
    for u, final in neighbours:
        box = meet(start, out.shape, u.start, u.size)
        if box is None:
            continue
        part = out[_inside(box, start)]  # a view
        gaps = part == 0
        if gaps.any():
            part[gaps] = final(read_box(u, *box)[gaps])


def _final(lut: np.ndarray, base: int, block: np.ndarray) -> np.ndarray:
    """Final ids of a tile's ids (0 stays 0): single-task stitch, tile id range from `base`."""
    return lut[np.where(block > 0, block.astype(np.uint64) + np.uint64(base), 0)]


def global_ids(top: int, edges: list[np.ndarray], used: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Lookup (offset tile id -> final id) after joining `edges`, and the merged ids that own voxels.

    Objects that own voxels are numbered 1..K in order of first appearance; ids seen only in
    overlaps map to 0 (another tile owns those voxels).
    """
    lut = merge_ids(top, edges)
    owning = np.zeros(int(lut.max()) + 1 if len(lut) else 1, bool)  # a mask, not np.unique: O(ids)
    if used:
        owning[lut[np.concatenate(used)]] = True
    owning[0] = False
    present = np.flatnonzero(owning).astype(np.uint64)
    final = np.zeros(len(owning), np.uint64)
    final[present] = np.arange(1, len(present) + 1, dtype=np.uint64)
    return final[lut], present


def neighbour_pairs(t: TileSegmentation, u: TileSegmentation, params: StitchParams, judge=None) -> np.ndarray | None:
    """Agreeing (t id, u id) pairs where two tiles' infer boxes meet; None when they do not.

    `judge` (stages/resegment.Judge, with ffn.stitch.resegment) decides the uncertain pairs by a fill."""
    box = intersection(t, u)
    if box is None:
        return None
    a, b = read_box(t, *box), read_box(u, *box)
    found = pair_counts_where_both(a, b)  # counted once, for the rule and the judge
    by_rule = owner_pairs(t, u, box, a, b, params) if params.fraction_of == "owner" else _agreeing(found, params)
    return by_rule if judge is None else judge.decide(t, u, box, a, b, found, by_rule)


def check_tile(t: TileSegmentation, shape) -> None:
    """The tile's segmentation file covers its infer box, and its core lies in the volume."""
    offset, size = segmentation_box(t.location)
    if offset != t.start or size != t.size:
        raise HpcffnError(f"{t.location} covers offset {offset} shape {size}, not tile {t.name}'s infer box "
                          f"{t.start} {t.size}: it is from another plan; re-run that tile's infer task")
    if any(c < 0 or c + n > s for c, n, s in zip(t.core_start, t.core_size, shape)):
        raise HpcffnError(f"tile {t.name} owns {t.core_start} size {t.core_size}, outside the volume {tuple(shape)}")


def stitch(tiles: list[TileSegmentation], shape, output: Location, params: StitchParams,
           log: Callable[[str], None] = print, judge=None) -> dict:
    """Stitch `tiles` into `output` (a new uint64 dataset of `shape`), written atomically.

    `judge`: decides uncertain joins by a fill (ffn.stitch.resegment; stages/resegment.py)."""

    from hpcffn.io.volumes import atomic_h5

    for t in tiles:
        check_tile(t, shape)
    # Pass 1: each tile's id range, and the ids that appear in the part it owns.
    bases, used, top = [], [], 0
    for t in tiles:
        biggest, own = tile_ids(t)
        bases.append(top)
        used.append(own + np.uint64(top))
        top += biggest
    # The neighbours' ids that fill each tile's gaps own voxels too.
    near = [fill_neighbours(t, tiles) if params.fill_gaps else [] for t in tiles]
    fills = [ids + np.uint64(bases[k]) for t, ks in zip(tiles, near)
             for k, ids in zip(ks, gap_fill_ids(t, [tiles[k] for k in ks]))]
    # Join segments that agree where neighbouring tiles overlap.
    edges, joins = [], 0
    for i, t in enumerate(tiles):
        for j in range(i + 1, len(tiles)):
            pairs = neighbour_pairs(t, tiles[j], params, judge)
            if pairs is None:
                continue
            pairs[:, 0] += np.uint64(bases[i])
            pairs[:, 1] += np.uint64(bases[j])
            edges.append(pairs)
            joins += len(pairs)
    lut, present = global_ids(top, edges, used + fills)
    # Pass 2: write what each tile owns, its gaps filled from its neighbours.
    with atomic_h5(output.path) as f:
        chunks = tuple(min(64, s) for s in shape) if all(shape) else None
        ds = f.create_dataset(output.dataset, shape=tuple(shape), dtype=np.uint64, chunks=chunks,
                              compression="gzip", compression_opts=1, fillvalue=0)
        for t, base, ks in zip(tiles, bases, near):
            others = [(tiles[k], partial(_final, lut, bases[k])) for k in ks]
            for z, block in _slabs(t, t.core_start, t.core_size):
                c = t.core_start
                ids = _final(lut, base, block)
                fill_gaps(ids, (c[0] + z, c[1], c[2]), others)
                ds[c[0] + z:c[0] + z + len(block), c[1]:c[1] + block.shape[1], c[2]:c[2] + block.shape[2]] = ids
            log(f"hpcffn stitch: wrote tile {t.name}")
        f.attrs["offset"] = ds.attrs["offset"] = np.zeros(3, np.int64)
        f.attrs["tiles"] = len(tiles)
        f.attrs["segments"] = len(present)
    summary = {"output": str(output), "tiles": len(tiles), "tile_segments": int(sum(len(u) for u in used)),
               "joins": joins, "segments": len(present)}
    log(f"hpcffn stitch: {summary['tile_segments']} tile segments, {joins} joins across tile overlaps "
        f"-> {len(present)} segments in {output}")
    return summary


def stitch_files(segmentations: list[str], output: str, params: StitchParams, shape=None, log=print) -> dict:
    """Standalone: stitch infer outputs ("seg.h5[:seg]", each with its `offset`) that form a grid;
    `params.resegment` must be off (no plan: no image or checkpoint to fill with)."""
    if not segmentations:
        raise HpcffnError("give at least one --segmentation seg.h5[:seg]")
    if params.resegment:
        raise HpcffnError("resegment needs the plan's image and checkpoint: stitch with --plan, or turn resegment off")
    locs = [parse_location(s, "seg") for s in segmentations]
    boxes = [segmentation_box(loc) for loc in locs]
    names = [Path(loc.path).name for loc in locs]
    if len(set(boxes)) < len(boxes):
        raise HpcffnError("two --segmentation files cover the same box: give each tile once")
    cores = grid_cores(boxes, names)
    full = tuple(max(o[a] + s[a] for o, s in boxes) for a in range(3))
    if shape is not None:
        if any(f > s for f, s in zip(full, shape)):
            raise HpcffnError(f"the segmentations reach {full} (z,y,x), beyond --shape {tuple(shape)}")
        full = tuple(shape)
    tiles = [TileSegmentation(n, loc, b[0], b[1], c[0], c[1]) for n, loc, b, c in zip(names, locs, boxes, cores)]
    return stitch(tiles, full, parse_location(output, "seg"), params, log=log)


def plan_tiles(plan: Plan, volume_name: str, names=None) -> list[TileSegmentation]:
    """The tiles of a plan's volume (or only `names` of them) with their infer outputs."""
    tiles = []
    for t in plan.tiles:
        if t.volume != volume_name or (names is not None and t.name not in names):
            continue
        path = plan.layout.segmentation(t.name)
        if not path.is_file():
            raise HpcffnError(f"tile {t.name} has no segmentation ({path}): run its infer task first "
                              f"(`hpcffn submit --resume` or `hpcffn stage infer --plan {plan.layout.plan} --tile {t.name}`)")
        tiles.append(TileSegmentation(t.name, Location(path, "seg"), tuple(t.infer_box.start), tuple(t.infer_box.size),
                                      tuple(t.box.start), tuple(t.box.size)))
    return tiles


def run_from_plan(plan: Plan, volume_name: str, params: StitchParams | None = None, log=print) -> dict:
    """Single-task stitch of one volume of a plan into workdir/stitch/<volume>.h5:seg, and mark it done.

    The planned jobs stitch in parallel instead (joins, resolve, relabel, pyramid); this one
    task is the reference they are tested against and suits small volumes. With
    ffn.stitch.resegment it decides uncertain joins by fills, as the joins tasks do.
    """
    from hpcffn.stages.markers import hold_unit, mark_done
    from hpcffn.stages.resegment import judge_of

    volume = plan.volume(volume_name)
    tiles = plan_tiles(plan, volume.name)
    out = plan.layout.stitched_hdf5(volume.name)
    params = params or plan.ffn.stitch
    with hold_unit(plan, "stitch", volume.name, (out,)):
        judge = judge_of(plan, params, volume.name, log)
        summary = stitch(tiles, volume.shape, Location(out, "seg"), params, log=log, judge=judge)
        mark_done(plan, "stitch", volume.name, segments=summary["segments"], joins=summary["joins"])
    return summary

