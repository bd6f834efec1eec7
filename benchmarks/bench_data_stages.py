"""Benchmark stage 1 (partitions) and stage 2 (coordinates) against straightforward baselines.

Builds a FIB-25-like labelled volume (default 250^3: ~110 touching tubes drifting through z
plus ~430 small bodies below min_size, ~540 bodies of which ~100 are partitioned, as in the
FIB-25 groundtruth crop the targets come from; --large: 500^3 with ~1000 tubes), then runs:

  partitions   ours: `hpcffn stage partitions` end to end in a fresh process (interpreter
               start, imports, HDF5 read and write), --repeat times; target <= 3 s wall and
               <= 400 MB peak
               baseline: FFN's algorithm (one full-volume mask + summed-volume table per id),
               timed on --ref-ids ids and extrapolated to all ids (it needs volume x objects
               work: minutes to hours), checked voxel-for-voxel against ours on those ids
  coordinates  ours: `hpcffn stage coordinates --max-records --coord-records` end to end,
               --repeat times; target <= 200 MB peak and >= 1 M records/s
               baseline: FFN's build_coordinates (a Python tuple per voxel, one tf.train.Example
               and one TFRecordWriter.write per record) on a --ref-crop^3 crop of the same
               partition map, reported as rates (its memory grows with voxels x ~100 bytes)

    python benchmarks/bench_data_stages.py [--large] [--repeat 3] [--ref-ids 8] [--workdir DIR]

Prints min and median wall time, CPU and peak memory (VmHWM of the command's own process)
over the repeats, the load average (other jobs share the cores: wall time depends on it,
CPU time much less), the targets, and ours/baseline ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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


def fib25_like_volume(n: int, tubes: int, small: int = 0, seed: int = 0) -> np.ndarray:
    """Touching tubes (a 2-D Voronoi partition of y,x drifting along z, cropped from a larger
    plane: unlike make_volume's rolled tubes, no body wraps around to the far side, which
    real bodies never do) plus `small` round bodies of 3-12 voxels radius on top."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    pad = 24
    m = n + 2 * pad
    pts = rng.random((tubes, 2)) * m
    yy, xx = np.mgrid[:m, :m]
    base = cKDTree(pts).query(np.stack([yy.ravel(), xx.ravel()], 1))[1].reshape(m, m).astype(np.uint64) + 1
    seg = np.empty((n, n, n), np.uint64)
    for z in range(n):
        dy, dx = int(pad + 8 * np.sin(z / 40)), pad - 12 + z * 24 // n
        seg[z] = base[dy:dy + n, dx:dx + n]
    zz, yy, xx = np.ogrid[:n, :n, :n]
    for i in range(small):
        c, r = rng.integers(0, n, 3), int(rng.integers(3, 13))
        lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, n)
        ball = ((zz[lo[0]:hi[0]] - c[0]) ** 2 + (yy[:, lo[1]:hi[1]] - c[1]) ** 2
                + (xx[:, :, lo[2]:hi[2]] - c[2]) ** 2) <= r * r
        seg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball] = tubes + 1 + i
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


_HWM_AT_EXIT = (
    "import atexit, runpy, sys\n"
    "def hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('VmHWM_KB', line.split()[1], file=sys.stderr)\n"
    "atexit.register(hwm)\n"
    "sys.argv = ['hpcffn', *sys.argv[1:]]\n"
    "runpy.run_module('hpcffn.cli', run_name='__main__')\n"
)


def run_cli(args: list[str]) -> dict:
    """`hpcffn ARGS` in a fresh interpreter: wall (start-up and imports included), CPU of that
    process (os.wait4), and its own peak memory (VmHWM printed at exit)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _HWM_AT_EXIT, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"hpcffn {' '.join(args)} failed:\n{stderr[-3000:]}")
    peak = [int(line.split()[1]) / 1024 for line in stderr.splitlines() if line.startswith("VmHWM_KB")]
    return {"seconds": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mb": peak[-1], "stdout": stdout}


def repeat(n: int, args: list[str], before=None) -> dict:
    """min / median of wall, CPU and peak over n runs (other jobs share the cores)."""
    runs = []
    for _ in range(n):
        if before:
            before()
        runs.append(run_cli(args))
    out = {k: (min(r[k] for r in runs), statistics.median(r[k] for r in runs)) for k in ("seconds", "cpu", "peak_mb")}
    out["stdout"] = runs[-1]["stdout"]
    return out


def _load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def _fmt(m: dict, key: str, unit: str, digits: int = 1) -> str:
    lo, med = m[key]
    return f"{lo:.{digits}f}/{med:.{digits}f} {unit}"


def _busy_note() -> str:
    """A note when other jobs hold the cores: the wall times then mostly measure the queue.

    Both commands keep the cores busy in parallel (threads), so on a quiet machine their wall
    time is at most their CPU time: the CPU verdict is what a quiet machine would show.
    """
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    return f" [machine busy: load {load:.1f} on {cores} cores; quiet wall <= CPU]" if load > cores else ""


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", action="store_true", help="500^3 with ~1000 tubes instead of the FIB-25-like 250^3")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each of our commands (min and median shown)")
    ap.add_argument("--coord-records", type=int, default=16_400_000,
                    help="--max-records of our coordinates run (FIB-25's map gave 16.4 M)")
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

    n, tubes, small = (500, 1000, 0) if a.large else (250, 110, 430)
    tmp = tempfile.TemporaryDirectory(prefix="bench_data_", dir=a.workdir)
    work = Path(tmp.name)
    seg = fib25_like_volume(n, tubes, small)
    with h5py.File(work / "gt.h5", "w") as fh:
        fh["stack"] = seg
    ids, sizes = np.unique(seg, return_counts=True)
    print(f"volume {n}^3 uint64 = {seg.size:,} voxels, {len(ids)} touching bodies ({int((sizes >= MIN_SIZE).sum())} "
          f">= min_size {MIN_SIZE}), lom_radius {RADIUS}, margin {MARGIN}; {a.repeat} runs each, min/median shown")
    del seg, ids, sizes
    args = {"ref_ids": a.ref_ids, "ref_crop": a.ref_crop, "ref_records": a.ref_records}
    common = ["--lom-radius", ",".join(map(str, RADIUS)), "--thresholds", ",".join(map(str, THRESHOLDS)),
              "--min-size", str(MIN_SIZE)]

    print(f"[{_load()}]")
    po = repeat(a.repeat, ["stage", "partitions", "--input", f"{work}/gt.h5:stack", "--output", f"{work}/af.h5:af",
                           "--overwrite", *common])
    print(f"partitions  ours     : {_fmt(po, 'seconds', 's wall')} (CPU {_fmt(po, 'cpu', 's')}), "
          f"peak {_fmt(po, 'peak_mb', 'MB', 0)}; `hpcffn stage partitions` end to end")
    if not a.large:
        print(f"partitions  target   : <= 3 s wall and <= 400 MB: "
              f"{_verdict(po['seconds'][0] <= 3 and po['peak_mb'][1] <= 400)} (best wall, median peak); "
              f"by CPU time: {_verdict(po['cpu'][0] <= 3 and po['peak_mb'][1] <= 400)}{_busy_note()}")
    if not a.skip_baselines:
        pr = run_worker("part_ref", work, args)
        print(f"partitions  baseline : {pr['seconds_sample']:.1f} s for {pr['ids_sample']} of {pr['ids_total']} ids "
              f"-> {pr['seconds_extrapolated']:.0f} s wall / {pr['cpu_extrapolated']:.0f} s CPU extrapolated, "
              f"peak {pr['peak_mb']:.0f} MB, "
              f"identical on those ids: {pr['equal_on_sample']}")
        print(f"partitions  speed-up : {pr['seconds_extrapolated'] / po['seconds'][0]:.1f}x wall, "
              f"{pr['cpu_extrapolated'] / po['cpu'][0]:.1f}x CPU (baseline extrapolated / ours, best runs)")

    print(f"[{_load()}]")
    out = work / "ours.tfrecord.gz"
    co = repeat(a.repeat, ["stage", "coordinates", "--input", f"vol:{work}/af.h5:af", "--output", str(out),
                           "--margin", ",".join(map(str, MARGIN)), "--max-records", str(a.coord_records)],
                before=lambda: out.unlink(missing_ok=True))
    records = int(co["stdout"].split(": ", 1)[1].split()[0])
    best, median = records / co["seconds"][0] / 1e6, records / co["seconds"][1] / 1e6
    print(f"coordinates ours     : {records:,} records in {_fmt(co, 'seconds', 's wall')} (CPU {_fmt(co, 'cpu', 's')}) "
          f"= {best:.2f}/{median:.2f} M records/s, {out.stat().st_size / 1e6:.0f} MB gz, "
          f"peak {_fmt(co, 'peak_mb', 'MB', 0)}")
    by_cpu = records / co["cpu"][0] / 1e6
    print(f"coordinates target   : <= 200 MB and >= 1 M records/s: "
          f"{_verdict(co['peak_mb'][1] <= 200 and best >= 1)} (median peak, best rate); "
          f"by CPU time ({by_cpu:.2f} M records per CPU second): {_verdict(co['peak_mb'][1] <= 200 and by_cpu >= 1)}"
          f"{_busy_note()}")
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
            print(f"coordinates speed-up : {best * 1e6 / rate:.1f}x records/s (ours end to end / baseline writer alone)")
    print(f"[{_load()}]")
    tmp.cleanup()


if __name__ == "__main__":
    main()
