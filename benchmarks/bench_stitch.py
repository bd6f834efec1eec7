"""Benchmark stitching: the single-task stitch against the planned, parallel one (issue 11).

Default run (the issue's measurement). For 8 and 64 synthetic tiles (a 2^3 and a 4^3 grid of
--tile^3 tiles with --overlap, touching tubes from bench_data_stages.make_volume, ids renumbered
per tile as independent infer jobs number them), in a real plan:

  single    `hpcffn stage stitch --plan P --volume 0`: one task reads every tile, writes one HDF5
  parallel  `hpcffn run P --stage stitch --parallel J` (the local runner, J = 1 and 2): the jobs
            joins (array over tiles), resolve (one task), relabel (array over tiles) and
            pyramid_s<k> (arrays over blocks), writing the OME-Zarr volume

Every task runs through a wrapper that records its wall time and peak memory (ru_maxrss), so
the figures are per task. Both results are compared voxel for voxel. Then resolve alone on
10,000 tiles' worth of synthetic joins files (a 10x20x50 grid, --ids ids per tile, every tile
joined with its 3 later face neighbours by --pairs pairs each): load + union-find + write.

Extrapolation to 10,000 tiles on 100 tasks at a time: per-tile task times (mean of joins,
relabel, and pyramid blocks per tile, measured at 64 tiles) x 10,000 / 100 + the measured
10,000-tile resolve; the single task: its time per tile at 64 tiles x 10,000.
Targets: peak memory per task the same at 8 and 64 tiles; resolve < 60 s at 10,000 tiles.

    python benchmarks/bench_stitch.py [--tile 48] [--overlap 6] [--ids 1000] [--pairs 100]
    python benchmarks/bench_stitch.py --vs-in-memory [--large]   # ours vs an in-memory baseline (8 tiles)

The --vs-in-memory mode: builds a labelled volume of touching tubes (default 256^3,
--large 500^3), cuts it into a 2x2x2 grid of overlapping tiles and, each in a fresh worker
process so peak memory is per measurement:
  ours      hpcffn.stages.stitch.stitch_files: z-slabs of one tile and one shared region at a
            time, pair counts by ranked ids, union-find, slab-wise write
  baseline  what one writes first: every tile in memory, the whole volume assembled in memory,
            pairs by np.unique(axis=0) over the shared regions, union-find, one relabel pass
            (np.unique(return_inverse)) over the whole volume, one write

Both apply the same joining rule, so they must give the same objects: each prints its segment
count and adapted Rand error against the volume (objects are made connected first). Prints
wall and CPU time and peak memory of each, and the ratios baseline/ours.

    python benchmarks/bench_stitch.py --vs-in-memory [--large] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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

        stitch_files([str(p) for p in paths], str(out), StitchParams(resegment=False), log=lambda s: None)
    else:
        baseline_stitch(paths, out)
    wall, cpu, peak = time.perf_counter() - t, cpu_seconds() - c, peak_mb()
    from hpcffn.stages.evaluate import compare

    with h5py.File(out) as f:
        m = compare(f["seg"][...], np.load(work / "volume.npy"))
    return {"wall": wall, "cpu": cpu, "peak_mb": peak, "are": m["adapted_rand_error"],
            "segments": m["segments"], "objects": m["objects"]}


WRAPPER = """#!/usr/bin/env python3
import json, os, resource, sys, time
t = time.perf_counter()
from hpcffn.cli import main
try:
    main()
finally:
    rec = {"argv": sys.argv[1:], "wall": time.perf_counter() - t,
           "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(os.environ["BENCH_LOG"], "a") as fh:
        fh.write(json.dumps(rec) + "\\n")
"""


def make_plan_workdir(root: Path, grid: int, tile: int, overlap: int) -> Path:
    """A planned experiment of grid^3 tiles over touching tubes, with fake infer outputs; returns the workdir."""
    import cc3d
    import h5py
    import yaml

    from hpcffn.plan.planner import make_plan
    from hpcffn.plan.render import write_workdir
    from hpcffn.stages.infer import write_segmentation

    n = grid * tile
    root.mkdir(parents=True, exist_ok=True)
    labels = cc3d.connected_components(make_volume(n, max(8, grid ** 3 * 6)), connectivity=6).astype(np.uint64)
    with h5py.File(root / "v.h5", "w") as f:
        f.create_dataset("raw", data=(labels * 37 % 251).astype(np.uint8))
        f.create_dataset("stack", data=labels)
    wrapper = root / "hpcffn-timed"
    wrapper.write_text(WRAPPER.replace("/usr/bin/env python3", sys.executable))
    wrapper.chmod(0o755)
    spec = {"name": f"bench{grid}", "workdir": "work", "stages": ["infer", "stitch"],
            "volumes": [{"name": "v", "raw": "v.h5:raw"}],
            "subvolume": {"size": [tile] * 3, "overlap": [overlap] * 3},
            "ffn": {"model": {"depth": 2, "fov_size": [9, 9, 9], "deltas": [2, 2, 2]}, "coordinates": {"margin": [6, 6, 6]},
                    "inference": {"checkpoint": "model/ckpt-1"}},
            "cluster": {"profile": "local"}, "container": {"runtime": "none", "command": str(wrapper)}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    planned = make_plan(root / "spec.yaml")
    write_workdir(planned.plan, planned.scripts, planned.resolved_yaml, force=True, dry_run=False)
    for i, t in enumerate(planned.plan.tiles):
        crop = labels[t.infer_box.slices]
        ids, inverse = np.unique(crop, return_inverse=True)
        new = np.random.default_rng(i).permutation(len(ids)).astype(np.uint64) + 1
        new[ids == 0] = 0
        write_segmentation(planned.plan.layout.segmentation(t.name), new[inverse].reshape(crop.shape), t.infer_box.start)
        planned.plan.layout.marker("infer", t.name).parent.mkdir(parents=True, exist_ok=True)
        planned.plan.layout.marker("infer", t.name).write_text("{}")
    return root / "work"


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def _reset(workdir: Path) -> None:
    import shutil

    keep = workdir / "stitch" / "v.h5"  # the single task's result, compared against
    olds = [*(workdir / "stitch").glob("*"), workdir / "state.json",
            *(workdir / "markers" / s for s in ("joins", "resolve", "relabel", "pyramid"))]
    for path in olds:
        if path != keep:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def measure(workdir: Path, how: str) -> dict:
    """Run the single-task stitch or the parallel jobs (`-j N`); wall time and per-task records."""
    log = workdir / f"bench-{how}.jsonl"
    log.unlink(missing_ok=True)
    _reset(workdir)
    env = {**os.environ, "BENCH_LOG": str(log)}
    wrapper = str(workdir.parent / "hpcffn-timed")
    if how == "single":
        cmd = [wrapper, "stage", "stitch", "--plan", str(workdir), "--volume", "0"]
    else:
        cmd = [sys.executable, "-m", "hpcffn.cli", "run", str(workdir), "--stage", "stitch", "--parallel", how[1:],
               "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {"wall": wall, "tasks": _records(log)}


def by_step(records: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in records:
        step = r["argv"][1]
        d = out.setdefault(step, {"n": 0, "wall": 0.0, "peak_mb": 0.0})
        d["n"] += 1
        d["wall"] += r["wall"]
        d["peak_mb"] = max(d["peak_mb"], r["peak_mb"])
    return out


def same_result(workdir: Path) -> bool:
    import h5py
    import zarr

    with h5py.File(workdir / "stitch" / "v.h5") as f:
        single = f["seg"][...]
    return bool(np.array_equal(single, zarr.open_array(str(workdir / "stitch" / "v.ome.zarr" / "labels/seg/0"), mode="r")[...]))


def resolve_at_scale(root: Path, ids: int, pairs: int, grid=(10, 20, 50)) -> dict:
    """resolve on synthetic joins files of a grid of tiles: (load, union-find + numbering, write) seconds."""
    from hpcffn.stages.joins import save_npz
    from hpcffn.stages.resolve import load_joins, resolve

    rng = np.random.default_rng(0)
    gz, gy, gx = grid
    names = [f"v_z{k}_y{i}_x{j}" for k in range(gz) for i in range(gy) for j in range(gx)]
    folder = root / "joins"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / f"{names[-1]}.npz").is_file():
        for n, name in enumerate(names):
            k, rest = divmod(n, gy * gx)
            i, j = divmod(rest, gx)
            later = [(k + dk, i + di, j + dj) for dk, di, dj in ((0, 0, 1), (0, 1, 0), (1, 0, 0))
                     if k + dk < gz and i + di < gy and j + dj < gx]
            table = [np.column_stack([rng.integers(1, ids + 1, pairs), rng.integers(1, ids + 1, pairs),
                                      np.full(pairs, q)]) for q in range(len(later))]
            save_npz(folder / f"{name}.npz", biggest=np.int64(ids), owned=np.arange(1, ids + 1, dtype=np.uint64),
                     neighbours=np.array([f"v_z{a}_y{b}_x{c}" for a, b, c in later], dtype=str),
                     pairs=(np.concatenate(table) if table else np.zeros((0, 3))).astype(np.uint64))
    t0 = time.perf_counter()
    joins = [load_joins(folder / f"{name}.npz", name, "bench") for name in names]
    t1 = time.perf_counter()
    lut, _, segments, n_joins = resolve(names, joins)
    t2 = time.perf_counter()
    np.save(root / "lut.npy", lut.astype(np.uint32))
    t3 = time.perf_counter()
    return {"tiles": len(names), "ids": len(names) * ids, "joins": n_joins, "segments": segments,
            "load": t1 - t0, "resolve": t2 - t1, "write": t3 - t2, "total": t3 - t0, "peak_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vs-in-memory", action="store_true", help="the older comparison: ours vs an in-memory stitch")
    ap.add_argument("--large", action="store_true", help="--vs-in-memory: 500^3 with ~1000 objects instead of 256^3")
    ap.add_argument("--overlap", type=int, default=None, help="voxels each tile reads past its core (default 6; 32 in --vs-in-memory)")
    ap.add_argument("--tile", type=int, default=48, help="tile edge of the parallel benchmark")
    ap.add_argument("--ids", type=int, default=1000, help="ids per tile in the 10,000-tile resolve")
    ap.add_argument("--pairs", type=int, default=100, help="joins per neighbour pair in the 10,000-tile resolve")
    ap.add_argument("--workdir")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, Path(a.workdir))))
        return
    if a.vs_in_memory:
        in_memory(a)
        return
    root = Path(a.workdir or tempfile.mkdtemp(prefix="hpcffn-bench-stitch-"))
    overlap = 6 if a.overlap is None else a.overlap
    per_tile = {}
    for grid in (2, 4):
        workdir = make_plan_workdir(root / f"grid{grid}", grid, a.tile, overlap)
        tiles = grid ** 3
        print(f"{tiles} tiles of {a.tile}^3 (+{overlap} overlap), volume {grid * a.tile}^3:")
        for how in ("single", "j1", "j2"):
            r = measure(workdir, how)
            steps = by_step(r["tasks"])
            if how == "single":
                print(f"  single task      wall {r['wall']:6.1f} s  peak {steps['stitch']['peak_mb']:6.0f} MB")
                single_per_tile = r["wall"] / tiles
                continue
            peaks = ", ".join(f"{s} {d['peak_mb']:.0f}" for s, d in steps.items())
            print(f"  parallel -j {how[1:]}     wall {r['wall']:6.1f} s  resolve {steps['resolve']['wall']:.1f} s  "
                  f"peak per task (MB): {peaks}")
            if how == "j1":
                print(f"  same result as the single task, voxel for voxel: {same_result(workdir)}")
                task_s = sum(d["wall"] for s, d in steps.items() if s != "resolve")
                per_tile[grid] = {"task_s": task_s / tiles, "single_s": single_per_tile,
                                  "peak": max(d["peak_mb"] for d in steps.values())}
    r = resolve_at_scale(root / "resolve10k", a.ids, a.pairs)
    print(f"resolve, {r['tiles']} tiles: {r['ids']} tile ids, {r['joins']} joins -> {r['segments']} segments: "
          f"load {r['load']:.1f} s + union-find {r['resolve']:.1f} s + write {r['write']:.1f} s = {r['total']:.1f} s "
          f"(target < 60 s: {'met' if r['total'] < 60 else 'MISSED'}); peak {r['peak_mb']:.0f} MB (grows with ids, not voxels)")
    p8, p64 = per_tile[2], per_tile[4]
    print(f"peak memory per task: {p8['peak']:.0f} MB at 8 tiles, {p64['peak']:.0f} MB at 64 tiles "
          f"(ratio {p64['peak'] / p8['peak']:.2f}; target: independent of the tile count)")
    parallel = p64["task_s"] * 10_000 / 100 + r["total"]
    single = p64["single_s"] * 10_000
    print(f"extrapolated to 10,000 tiles of {a.tile}^3 on 100 tasks at a time: parallel ~{parallel / 60:.1f} min "
          f"({p64['task_s']:.2f} task-s per tile x 10,000 / 100 + resolve {r['total']:.0f} s), single task "
          f"~{single / 60:.1f} min ({p64['single_s']:.2f} s per tile x 10,000); ratio single/parallel {single / parallel:.1f}x")


def in_memory(a) -> None:
    n, objects = (500, 1000) if a.large else (256, 300)
    overlap = 32 if a.overlap is None else a.overlap
    work = Path(a.workdir or tempfile.mkdtemp(prefix="hpcffn-bench-stitch-"))
    work.mkdir(parents=True, exist_ok=True)
    make_tiles(work, n, overlap, objects)
    res = {}
    for kind in ("ours", "baseline"):
        res[kind] = run_worker(kind, work, script=__file__)
    volume_mb = n ** 3 * 8 / 2 ** 20
    print(f"stitch {n}^3 ({objects} touching tubes), 8 tiles, overlap {overlap}; the uint64 volume is {volume_mb:.0f} MB")
    for kind, r in res.items():
        print(f"  {kind:8s} wall {r['wall']:6.1f} s  cpu {r['cpu']:6.1f} s  peak {r['peak_mb']:6.0f} MB  "
              f"{r['segments']} segments for {r['objects']} objects, adapted Rand error {r['are']:.5f}")
    o, b = res["ours"], res["baseline"]
    print(f"  ratio baseline/ours: wall {b['wall'] / o['wall']:.2f}x, cpu {b['cpu'] / o['cpu']:.2f}x, "
          f"peak memory {b['peak_mb'] / o['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
