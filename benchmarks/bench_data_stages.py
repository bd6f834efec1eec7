"""Benchmark stage 1 (partitions) and stage 2 (coordinates) against straightforward baselines.

Builds a synthetic labelled volume of touching tubular objects (default 256^3 with ~300
objects; --large: 500^3 with ~1000), then runs, each in a fresh worker process so peak memory
(ru_maxrss) is per measurement:

  partitions   ours: hpcffn.stages.partitions.compute_partitions (+ HDF5 write)
               baseline: FFN's algorithm (one full-volume mask + summed-volume table per id),
               timed on --ref-ids ids and extrapolated to all ids (it needs volume x objects
               work: minutes to hours), checked voxel-for-voxel against ours on those ids
  coordinates  ours: hpcffn.stages.coordinates.build_coordinates into GZIP TFRecord
               baseline: FFN's build_coordinates (a Python tuple per voxel, one tf.train.Example
               and one TFRecordWriter.write per record) on a --ref-crop^3 crop of the same
               partition map, reported as rates (its memory grows with voxels x ~100 bytes)

    python benchmarks/bench_data_stages.py [--large] [--ref-ids 8] [--ref-crop 96] [--workdir DIR]

Prints wall time, voxels/s, records/s and peak memory, and ours/baseline ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RADIUS = (24, 24, 24)
MIN_SIZE = 10000
MARGIN = (24, 24, 24)


def peak_mb() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the parent's
    peak, which Linux carries over fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process (user + system): meaningful even when other jobs share the cores."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_volume(n: int, objects: int, seed: int = 0) -> np.ndarray:
    """Touching tubes: a 2-D Voronoi partition of the y,x plane, drifting along z."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    pts = rng.random((objects, 2)) * n
    yy, xx = np.mgrid[:n, :n]
    base = cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], 1))[1].reshape(n, n).astype(np.uint32) + 1
    seg = np.empty((n, n, n), np.uint32)
    for z in range(n):
        seg[z] = np.roll(base, (int(8 * np.sin(z / 40)), z // 25), axis=(0, 1))
    return seg


# ------------------------------------------------------------------ baselines (FFN's way)
def _svt(mask):
    svt = mask.astype(np.int32).cumsum(axis=0).cumsum(axis=1).cumsum(axis=2)
    return np.pad(svt, [[1, 0], [1, 0], [1, 0]], mode="constant")


def _query(svt, d):
    return (svt[d[0]:, d[1]:, d[2]:] - svt[d[0]:, d[1]:, :-d[2]] - svt[d[0]:, :-d[1], d[2]:]
            - svt[:-d[0], d[1]:, d[2]:] + svt[:-d[0], :-d[1], d[2]:] + svt[:-d[0], d[1]:, :-d[2]]
            + svt[d[0]:, :-d[1], :-d[2]] - svt[:-d[0], :-d[1], :-d[2]])


def baseline_partitions(seg, ids):
    """FFN compute_partitions' per-id loop (full-volume passes), restricted to `ids`."""
    r = np.array(RADIUS[::-1])
    d = 2 * r + 1
    inner = tuple(slice(a, -a) for a in r)
    out = np.zeros(seg[inner].shape, np.uint8)
    fov = np.prod(d)
    for label in ids:
        mask = seg == label
        frac = _query(_svt(mask), d) / fov
        m = mask[inner]
        for i, th in enumerate(THRESHOLDS):
            out[m & (frac < th) & (out == 0)] = i + 1
        out[m & (frac >= THRESHOLDS[-1]) & (out == 0)] = len(THRESHOLDS) + 1
    return out


def baseline_coordinates(af, output, max_write: int):
    """FFN build_coordinates: tuples per voxel, resample, shuffle, one Example per record.

    Writes only the first `max_write` records (the per-record loop is the slow part; its
    rate is what is compared). Returns (index seconds, records written, write seconds).
    """
    from collections import defaultdict

    import tensorflow as tf

    t0 = time.perf_counter()
    mz, my, mx = MARGIN
    part = af[mz:-mz, my:-my, mx:-mx]
    totals, indices = defaultdict(int), defaultdict(list)
    vals, counts = np.unique(part, return_counts=True)
    for v, c in zip(vals, counts):
        if v == 255:
            continue
        totals[v] += c
        indices[v].extend([(0, i) for i in np.flatnonzero(part == v)])
    top = max(totals.values())
    idx = np.concatenate([np.resize(np.random.permutation(v), (top, 2)) for v in indices.values()], axis=0)
    np.random.shuffle(idx)
    t_index = time.perf_counter() - t0
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    t1 = time.perf_counter()
    with tf.io.TFRecordWriter(str(output), options=opts) as w:
        for _, ci in idx[:max_write]:
            z, y, x = np.unravel_index(ci, part.shape)
            ex = tf.train.Example(features=tf.train.Features(feature={
                "center": tf.train.Feature(int64_list=tf.train.Int64List(value=[mx + x, my + y, mz + z])),
                "label_volume_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"vol"])),
            }))
            w.write(ex.SerializeToString())
    return t_index, min(len(idx), max_write), time.perf_counter() - t1, len(idx)


# ------------------------------------------------------------------ workers
def worker(kind: str, work: Path, args: dict) -> dict:
    import h5py

    if kind == "part_ours":
        from hpcffn.stages.partitions import compute_partitions, write_partitions

        with h5py.File(work / "gt.h5") as fh:
            seg = fh["stack"][...]
        t, c = time.perf_counter(), cpu_seconds()
        af = compute_partitions(seg, THRESHOLDS, RADIUS, MIN_SIZE)
        t_compute = time.perf_counter() - t
        write_partitions(work / "af.h5", "af", af, lom_radius_xyz=RADIUS, thresholds=THRESHOLDS, min_size=MIN_SIZE)
        return {"seconds": time.perf_counter() - t, "compute_seconds": t_compute, "voxels": int(seg.size),
                "cpu": cpu_seconds() - c, "peak_mb": peak_mb()}
    if kind == "part_ref":
        with h5py.File(work / "gt.h5") as fh:
            seg = fh["stack"][...]
        with h5py.File(work / "af.h5") as fh:
            ours = fh["af"][...]
        ids, sizes = np.unique(seg, return_counts=True)
        kept = ids[(sizes >= MIN_SIZE) & (ids != 0)]
        sample = kept[: args["ref_ids"]]
        t, c = time.perf_counter(), cpu_seconds()
        ref = baseline_partitions(seg, sample)
        dt = time.perf_counter() - t
        cpu = cpu_seconds() - c
        r = np.array(RADIUS[::-1])
        inner = tuple(slice(a, -a) for a in r)
        sel = np.isin(seg[inner], sample)
        equal = bool(np.array_equal(ref[sel], ours[inner][sel]))
        return {"seconds_sample": dt, "ids_sample": len(sample), "ids_total": len(kept),
                "seconds_extrapolated": dt / len(sample) * len(kept), "equal_on_sample": equal,
                "cpu_extrapolated": cpu / len(sample) * len(kept),
                "voxels": int(seg.size), "peak_mb": peak_mb()}
    if kind == "coord_ours":
        from hpcffn.stages.coordinates import PartitionVolume, build_coordinates
        from hpcffn.io.volumes import Location

        t, c = time.perf_counter(), cpu_seconds()
        s = build_coordinates([PartitionVolume("vol", Location(work / "af.h5", "af"))], work / "ours.tfrecord.gz",
                              MARGIN, seed=0)
        dt = time.perf_counter() - t
        return {"seconds": dt, "records": s["records"], "bytes": (work / "ours.tfrecord.gz").stat().st_size,
                "cpu": cpu_seconds() - c, "peak_mb": peak_mb()}
    if kind == "coord_ref":
        c = args["ref_crop"]
        with h5py.File(work / "af.h5") as fh:
            af = fh["af"][:c, :c, :c]
        import tensorflow  # noqa: F401 - imported before timing

        t_index, written, t_write, total = baseline_coordinates(af, work / "ref.tfrecord.gz", args["ref_records"])
        m = np.array(MARGIN)
        return {"index_seconds": t_index, "write_seconds": t_write, "written": written, "records": total,
                "voxels": int(np.prod(np.array(af.shape) - 2 * m)), "peak_mb": peak_mb()}
    raise ValueError(kind)


def run_worker(kind: str, work: Path, args: dict | None = None, script: str = __file__) -> dict:
    """Run `script --worker KIND` in a fresh process (so its peak memory is its own); its last line is JSON."""
    extra = ["--args", json.dumps(args)] if args is not None else []
    proc = subprocess.run([sys.executable, script, "--worker", kind, "--workdir", str(work), *extra],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="500^3 with ~1000 objects instead of 256^3 with ~300")
    ap.add_argument("--ref-ids", type=int, default=8, help="ids the FFN-style partitions baseline runs on")
    ap.add_argument("--ref-crop", type=int, default=160, help="cube edge of the crop the coordinates baseline indexes")
    ap.add_argument("--ref-records", type=int, default=200_000, help="records the coordinates baseline writes")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--workdir")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--args", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, Path(a.workdir), json.loads(a.args))))
        return

    import h5py

    n, k = (500, 1000) if a.large else (256, 300)
    tmp = tempfile.TemporaryDirectory(prefix="bench_data_", dir=a.workdir)
    work = Path(tmp.name)
    seg = make_volume(n, k)
    with h5py.File(work / "gt.h5", "w") as fh:
        fh["stack"] = seg
    print(f"volume {n}^3 = {seg.size:,} voxels, {len(np.unique(seg))} touching tubular objects, "
          f"lom_radius {RADIUS}, min_size {MIN_SIZE}, margin {MARGIN}")
    del seg
    args = {"ref_ids": a.ref_ids, "ref_crop": a.ref_crop, "ref_records": a.ref_records}

    po = run_worker("part_ours", work, args)
    print(f"partitions  ours     : {po['seconds']:.1f} s wall (compute {po['compute_seconds']:.1f} s, "
          f"CPU {po['cpu']:.1f} s), {po['voxels'] / po['seconds'] / 1e6:.2f} M voxels/s, peak {po['peak_mb']:.0f} MB")
    if not a.skip_baselines:
        pr = run_worker("part_ref", work, args)
        print(f"partitions  baseline : {pr['seconds_sample']:.1f} s for {pr['ids_sample']} of {pr['ids_total']} ids "
              f"-> {pr['seconds_extrapolated']:.0f} s wall / {pr['cpu_extrapolated']:.0f} s CPU extrapolated, "
              f"peak {pr['peak_mb']:.0f} MB, "
              f"identical on those ids: {pr['equal_on_sample']}")
        print(f"partitions  speed-up : {pr['seconds_extrapolated'] / po['compute_seconds']:.1f}x wall, "
              f"{pr['cpu_extrapolated'] / po['cpu']:.1f}x CPU (baseline extrapolated / ours)")

    co = run_worker("coord_ours", work, args)
    print(f"coordinates ours     : {co['records']:,} records in {co['seconds']:.1f} s wall (CPU {co['cpu']:.1f} s) = "
          f"{co['records'] / co['seconds'] / 1e6:.2f} M records/s, {co['bytes'] / 1e6:.0f} MB gz, "
          f"peak {co['peak_mb']:.0f} MB")
    if not a.skip_baselines:
        try:
            cr = run_worker("coord_ref", work, args)
        except SystemExit as exc:
            print(f"coordinates baseline : skipped ({str(exc).splitlines()[-1]})")
        else:
            rate = cr["written"] / cr["write_seconds"]
            print(f"coordinates baseline : {a.ref_crop}^3 crop: indexed {cr['voxels']:,} voxels into {cr['records']:,} "
                  f"records in {cr['index_seconds']:.1f} s, peak {cr['peak_mb']:.0f} MB; wrote {cr['written']:,} in "
                  f"{cr['write_seconds']:.1f} s = {rate / 1e6:.3f} M records/s")
            print(f"coordinates speed-up : {co['records'] / co['seconds'] / rate:.1f}x records/s (ours end to end / "
                  "baseline writer alone)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
