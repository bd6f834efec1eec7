"""Experiment (not a pipeline feature yet): decide stitching joins by re-running FFN where two segments meet.

docs/real_data.md shows that joins decided from the overlap's voxel counts alone (every
`ffn.stitch.fraction_of` rule) miss the stitching target on some boxes of ts2_dev, while an ideal
join would meet it. This tries FFN's own way to tell whether two segments are one object
(google/ffn's resegmentation): for every candidate pair that any rule would join, flood-fill once
from the point deepest inside the voxels both segments share (a box of +-R voxels around it, the
tiles' weights), and join when the fill covers at least --coverage of each segment's voxels in that
box. A segment that one tile merged with another body is covered only in part, so it is not joined.

    python benchmarks/experiment_resegment_joins.py WORKDIR Z0,Y0,X0,DZ,DY,DX [--radius 40]
        [--max-candidates N]

WORKDIR is a `bench_real_pipeline.py --workdir` of a stitching run (its tiled/ and untiled/
plans), the box the same --box. Prints each candidate (rules that join it, the fill's coverage of
both segments, and whether groundtruth says they are one body), then the stitched segmentation's
score and cost against the untiled run for `larger` and for the resegmentation decision.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_real_pipeline as bench  # the benchmark beside this file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("box", help="z0,y0,x0,dz,dy,dx of the benchmark's --box")
    ap.add_argument("--radius", type=int, default=40, help="half size of the box each fill runs in (voxels)")
    ap.add_argument("--coverage", type=float, default=0.5, help="share of each segment the fill must cover")
    ap.add_argument("--max-candidates", type=int, default=None, help="stop after this many (a quick check)")
    ap.add_argument("--data", default=str(bench.ROOT.parent / "shared" / "fib25" / "ts2_dev"))
    args = ap.parse_args()
    import h5py
    import zarr

    from hpcffn.core.plan_model import load_plan
    from hpcffn.stages.infer import load_predict
    from hpcffn.stages.stitch import plan_tiles

    z0, y0, x0, dz, dy, dx = map(int, args.box.split(","))
    plan = load_plan(args.workdir / "tiled" / "work")
    tiles = plan_tiles(plan, "ts2")
    with h5py.File(plan.layout.converted_volume("ts2")) as f:
        raw = f["raw"][...]
    with h5py.File(Path(args.data) / "ts2_dev.h5") as f:
        truth = f["stack"][z0:z0 + dz, y0:y0 + dy, x0:x0 + dx]
    untiled = np.asarray(zarr.open_array(str(args.workdir / "untiled" / "work" / "stitch" / "ts2.ome.zarr"),
                                         path="labels/seg/0", mode="r")[:])
    predict, _, _ = load_predict("fib25", plan.ffn.model, plan.ffn.inference, False, log=lambda s: None)
    cut = Candidates(tiles, raw.shape, plan.ffn.model.fov_size)
    decided: dict[tuple, float | None] = {}
    t0, fovs = time.time(), 0
    for n, (key, rules) in enumerate(sorted(cut.pairs.items())):
        if args.max_candidates is not None and n >= args.max_candidates:
            break
        cover, spent, same = cut.resegment(key, raw, predict, plan, args.radius, truth)
        decided[key], fovs = cover, fovs + spent
        i, j, a, b = key
        shown = "-" if cover is None else f"{cover:.2f}"
        print(f"  {tiles[i].name}:{a} {tiles[j].name}:{b} rules={','.join(sorted(rules))} coverage {shown} "
              f"groundtruth: {'one body' if same else 'two bodies'}", flush=True)
    print(f"{len(decided)} candidates, {fovs} FOVs, {time.time() - t0:.0f} s")
    whole = bench.score(untiled, truth)
    print(f"untiled              : {bench.fmt(whole)}")
    for name, keep in (("larger", lambda k: "larger" in cut.pairs[k]),
                       (f"resegment >= {args.coverage}", lambda k: (decided[k] or 0) >= args.coverage)):
        joined = bench.score(cut.stitched([k for k in decided if keep(k)], truth.shape), truth)
        print(f"{name:21s}: {bench.fmt(joined)}  cost: {bench.cost_text(whole, joined)}")
    return 0


class Candidates:
    """The pairs of neighbouring tiles' segments that any join rule would join, and one fill each."""

    def __init__(self, tiles, shape, fov_size):
        from hpcffn.core.params import StitchParams
        from hpcffn.stages.stitch import neighbour_pairs, read_box

        self.tiles, self.shape = tiles, shape
        self.radius = [n // 2 for n in reversed(fov_size)]  # fov_size is x,y,z
        self.segs = [read_box(t, t.start, t.size).astype(np.uint64) for t in tiles]
        rules = (StitchParams(fraction_of="larger"), StitchParams(fraction_of="smaller", min_overlap_fraction=0.9),
                 StitchParams(fraction_of="owner"))
        self.pairs: dict[tuple, set] = {}
        for i in range(len(tiles)):
            for j in range(i + 1, len(tiles)):
                for rule in rules:
                    found = neighbour_pairs(tiles[i], tiles[j], rule)
                    for a, b in ([] if found is None else found.tolist()):
                        self.pairs.setdefault((i, j, a, b), set()).add(rule.fraction_of)

    def segment(self, i: int, ident: int, lo, hi) -> np.ndarray:
        """Tile i's segment `ident` in the volume box lo..hi (False outside the tile)."""
        out = np.zeros([h - lo_ for lo_, h in zip(lo, hi)], bool)
        t = self.tiles[i]
        a = [max(v, s) for v, s in zip(lo, t.start)]
        b = [min(v, s + n) for v, s, n in zip(hi, t.start, t.size)]
        if all(e > s for s, e in zip(a, b)):
            inside = self.segs[i][tuple(slice(s - o, e - o) for s, e, o in zip(a, b, t.start))]
            out[tuple(slice(s - o, e - o) for s, e, o in zip(a, b, lo))] = inside == ident
        return out

    def resegment(self, key, raw, predict, plan, radius: int, truth):
        """(the fill's smaller coverage of the two segments or None, FOVs spent, groundtruth says one body)."""
        from scipy import ndimage

        from hpcffn.ffn.canvas import INTERRUPTED, Canvas
        from hpcffn.stages.stitch import intersection

        i, j, a, b = key
        start, size = intersection(self.tiles[i], self.tiles[j])
        lo, hi = list(start), [s + n for s, n in zip(start, size)]
        shared = self.segment(i, a, lo, hi) & self.segment(j, b, lo, hi)
        fits = np.zeros_like(shared)  # where a FOV centred there lies inside the volume
        fits[tuple(slice(max(0, r - s), max(0, min(e, n - r) - s)) for s, e, n, r in
                   zip(lo, hi, self.shape, self.radius))] = True
        shared &= fits
        if not shared.any():
            return None, 0, True
        depth = ndimage.distance_transform_edt(shared)
        point = [int(v) + s for v, s in zip(np.unravel_index(np.argmax(depth), depth.shape), lo)]
        clo = [max(0, c - radius) for c in point]
        chi = [min(n, c + radius + 1) for c, n in zip(point, self.shape)]
        box = tuple(slice(s, e) for s, e in zip(clo, chi))
        canvas = Canvas(raw[box], predict, plan.ffn.model, plan.ffn.inference)
        mask, where = canvas.segment_at(tuple(c - s for c, s in zip(point, clo)))
        filled = np.zeros([e - s for s, e in zip(clo, chi)], bool)
        if mask is not None and mask is not INTERRUPTED:
            filled[where] = mask
        x, y = self.segment(i, a, clo, chi), self.segment(j, b, clo, chi)
        cover = min((filled & x).sum() / max(x.sum(), 1), (filled & y).sum() / max(y.sum(), 1))
        body = truth[box].astype(np.int64)
        same = bool(x.any() and y.any() and np.bincount(body[x]).argmax() == np.bincount(body[y]).argmax())
        return float(cover), canvas.evaluations, same

    def stitched(self, joins: list[tuple], shape) -> np.ndarray:
        """The tiles' cores with `joins` (keys of `pairs`) merged, as the stitch writes them."""
        from hpcffn.io.labeling import merge_ids

        bases, top = [], 0
        for seg in self.segs:
            bases.append(top)
            top += int(seg.max())
        edges = [np.array([[a + bases[i], b + bases[j]]], np.uint64) for i, j, a, b in joins]
        lut = merge_ids(top, edges)
        out = np.zeros(shape, np.uint64)
        for t, seg, base in zip(self.tiles, self.segs, bases):
            rel = tuple(slice(c - s, c - s + n) for c, s, n in zip(t.core_start, t.start, t.core_size))
            core = seg[rel]
            out[tuple(slice(c, c + n) for c, n in zip(t.core_start, t.core_size))] = np.where(core > 0, lut[core + base], 0)
        return out


if __name__ == "__main__":
    sys.exit(main())
