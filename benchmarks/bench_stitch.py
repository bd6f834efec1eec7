"""Benchmark stitching (hpcffn/stages/stitch.py) against a straightforward in-memory stitch.

Builds a labelled volume of touching tubes (bench_data_stages.make_volume; default 256^3,
--large 500^3), cuts it into a 2x2x2 grid of overlapping tiles and writes each tile as an
infer output (ids renumbered per tile, as independent infer jobs number them). Then, each in a
fresh worker process so peak memory is per measurement:

  ours      hpcffn.stages.stitch.stitch_files: z-slabs of one tile and one shared region at a
            time, pair counts by ranked ids, union-find, slab-wise write
  baseline  what one writes first: every tile in memory, the whole volume assembled in memory,
            pairs by np.unique(axis=0) over the shared regions, union-find, one relabel pass
            (np.unique(return_inverse)) over the whole volume, one write

Both apply the same joining rule, so they must give the same objects: each prints its segment
count and adapted Rand error against the volume (objects are made connected first). Prints
wall and CPU time and peak memory of each, and the ratios baseline/ours.

    python benchmarks/bench_stitch.py [--large] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_data_stages import cpu_seconds, make_volume, peak_mb, run_worker


def tile_boxes(n: int, overlap: int):
    """2x2x2 grid: each tile owns half of every axis and reads `overlap` voxels past it."""
    half = n // 2
    spans = [(0, half + overlap), (half - overlap, n)]
    return [((z0, y0, x0), (z1 - z0, y1 - y0, x1 - x0))
            for z0, z1 in spans for y0, y1 in spans for x0, x1 in spans]


def make_tiles(work: Path, n: int, overlap: int, objects: int) -> list[Path]:
    import cc3d

    from hpcffn.stages.infer import write_segmentation

    vol = cc3d.connected_components(make_volume(n, objects), connectivity=6)  # rolled tubes wrap: one id per piece
    np.save(work / "volume.npy", vol)
    paths = []
    for i, (start, size) in enumerate(tile_boxes(n, overlap)):
        crop = vol[tuple(slice(s, s + k) for s, k in zip(start, size))]
        ids, inverse = np.unique(crop, return_inverse=True)
        new = np.random.default_rng(i).permutation(len(ids)).astype(np.uint64) + 1
        paths.append(work / f"tile{i}.h5")
        write_segmentation(paths[-1], new[inverse].reshape(crop.shape), start)
    return paths


def baseline_stitch(paths: list[Path], output: Path) -> None:
    import h5py
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    tiles = []
    for p in paths:
        with h5py.File(p) as f:
            tiles.append((tuple(int(v) for v in f.attrs["offset"]), f["seg"][...]))
    n = max(o[0] + t.shape[0] for o, t in tiles)
    bases = np.cumsum([0] + [int(t.max()) for _, t in tiles])
    full = np.zeros((n, n, n), np.uint64)
    half = n // 2
    edges = []
    for i, (oi, ti) in enumerate(tiles):
        core = tuple(slice(0, half) if o == 0 else slice(half, n) for o in oi)
        local = tuple(slice(c.start - o, c.stop - o) for c, o in zip(core, oi))
        full[core] = np.where(ti[local] > 0, ti[local] + np.uint64(bases[i]), 0)
        for j in range(i + 1, len(tiles)):
            oj, tj = tiles[j]
            lo = [max(a, b) for a, b in zip(oi, oj)]
            hi = [min(a + s, b + t) for a, s, b, t in zip(oi, ti.shape, oj, tj.shape)]
            if any(h <= low for low, h in zip(lo, hi)):
                continue
            a = ti[tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, oi))].ravel()
            b = tj[tuple(slice(low - o, h - o) for low, h, o in zip(lo, hi, oj))].ravel()
            both = (a > 0) & (b > 0)
            pairs, common = np.unique(np.stack([a[both], b[both]], axis=1), axis=0, return_counts=True)
            ca = dict(zip(*np.unique(a[a > 0], return_counts=True)))
            cb = dict(zip(*np.unique(b[b > 0], return_counts=True)))
            keep = [k for k, (p, c) in enumerate(zip(pairs, common))
                    if c >= 100 and c >= 0.5 * max(ca[p[0]], cb[p[1]])]
            edges.append(pairs[keep] + np.array([bases[i], bases[j]], np.uint64))
    e = np.concatenate(edges).astype(np.int64)
    top = int(bases[-1]) + 1
    _, comp = connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(top, top)), directed=False)
    comp = comp.astype(np.uint64) + 1
    comp[0] = 0
    _, relabelled = np.unique(np.concatenate([[0], comp[full].ravel()]), return_inverse=True)  # 0 stays 0
    with h5py.File(output, "w") as f:
        f.create_dataset("seg", data=relabelled[1:].reshape(full.shape).astype(np.uint64), chunks=(64, 64, 64),
                         compression="gzip", compression_opts=1)


def worker(kind: str, work: Path) -> dict:
    import h5py

    paths = sorted(work.glob("tile*.h5"))
    out = work / f"{kind}.h5"
    t, c = time.perf_counter(), cpu_seconds()
    if kind == "ours":
        from hpcffn.core.params import StitchParams
        from hpcffn.stages.stitch import stitch_files

        stitch_files([str(p) for p in paths], str(out), StitchParams(), log=lambda s: None)
    else:
        baseline_stitch(paths, out)
    wall, cpu, peak = time.perf_counter() - t, cpu_seconds() - c, peak_mb()
    from hpcffn.stages.evaluate import compare

    with h5py.File(out) as f:
        m = compare(f["seg"][...], np.load(work / "volume.npy"))
    return {"wall": wall, "cpu": cpu, "peak_mb": peak, "are": m["adapted_rand_error"],
            "segments": m["segments"], "objects": m["objects"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="500^3 with ~1000 objects instead of 256^3 with ~300")
    ap.add_argument("--overlap", type=int, default=32, help="voxels each tile reads past the half (infer overlap)")
    ap.add_argument("--workdir")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, Path(a.workdir))))
        return
    n, objects = (500, 1000) if a.large else (256, 300)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="hpcffn-bench-stitch-"))
    work.mkdir(parents=True, exist_ok=True)
    make_tiles(work, n, a.overlap, objects)
    res = {}
    for kind in ("ours", "baseline"):
        res[kind] = run_worker(kind, work, script=__file__)
    volume_mb = n ** 3 * 8 / 2 ** 20
    print(f"stitch {n}^3 ({objects} touching tubes), 8 tiles, overlap {a.overlap}; the uint64 volume is {volume_mb:.0f} MB")
    for kind, r in res.items():
        print(f"  {kind:8s} wall {r['wall']:6.1f} s  cpu {r['cpu']:6.1f} s  peak {r['peak_mb']:6.0f} MB  "
              f"{r['segments']} segments for {r['objects']} objects, adapted Rand error {r['are']:.5f}")
    o, b = res["ours"], res["baseline"]
    print(f"  ratio baseline/ours: wall {b['wall'] / o['wall']:.2f}x, cpu {b['cpu'] / o['cpu']:.2f}x, "
          f"peak memory {b['peak_mb'] / o['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
