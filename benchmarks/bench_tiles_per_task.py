"""Batch occupancy of `tiles_per_task` on real FIB-25: FOVs per model call, same segmentations.

Cuts `--tiles` non-overlapping tiles from FIB-25 `training_sample2` (shared/fib25/ts2_dev,
dense groundtruth), segments them with Google's FIB-25 weights and FFN's settings (our
defaults) at each K of `--k` (tasks of K tiles, side by side, one model call per round), and
prints per K: model calls, FOVs, FOVs per call overall and while all K tiles of a task work
(target >= 0.9 x K), wall time and FOV/s (CPU: reported, not a target), and whether every
tile's segmentation equals the K = 1 one. With `--precision mixed_float16` the K = 1 run is
also made in float16 and compared with the float32 one and with the groundtruth (VI, ARE).

    nice -n 10 python benchmarks/bench_tiles_per_task.py [--fib25 ../shared/fib25] [--tiles 8]
        [--size 48 72 72] [--k 1 4 8] [--parallel-fills 1] [--precision float32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def tile_boxes(shape, size, count: int) -> list[tuple]:
    """`count` non-overlapping z,y,x starts of boxes of `size` in raster order."""
    starts = []
    for z in range(0, shape[0] - size[0] + 1, size[0]):
        for y in range(0, shape[1] - size[1] + 1, size[1]):
            for x in range(0, shape[2] - size[2] + 1, size[2]):
                starts.append((z, y, x))
    if len(starts) < count:
        raise SystemExit(f"only {len(starts)} tiles of {size} fit {shape}: use --size smaller or fewer --tiles")
    return starts[:count]


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fib25", type=Path, default=repo.parent / "shared" / "fib25")
    ap.add_argument("--tiles", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=3, default=(48, 72, 72), metavar=("Z", "Y", "X"))
    ap.add_argument("--k", type=int, nargs="+", default=(1, 4, 8))
    ap.add_argument("--parallel-fills", type=int, default=1)
    ap.add_argument("--precision", choices=("float32", "mixed_float16"), default="float32",
                    help="mixed_float16: also segment every tile at K=1 in float16 and compare")
    a = ap.parse_args()

    import h5py

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from hpcffn.core.params import InferenceParams, ModelParams
    from hpcffn.ffn.inference import make_predict, segment_volume
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.multi_tile import run_side_by_side
    from hpcffn.ffn.tf1_import import load_weights
    from hpcffn.stages.evaluate import compare

    path = a.fib25 / "ts2_dev" / "ts2_dev.h5"
    if not path.is_file():
        raise SystemExit(f"no {path}: pass --fib25 DIR (shared/fib25)")
    with h5py.File(path, "r") as f:
        raw, stack = f["raw"][...], f["stack"][...]
    starts = tile_boxes(raw.shape, a.size, a.tiles)
    boxes = [tuple(slice(s, s + n) for s, n in zip(st, a.size)) for st in starts]
    mp = ModelParams()
    params = InferenceParams(parallel_fills=a.parallel_fills)
    checkpoint = str(a.fib25 / "model" / "model.ckpt-27465036")

    def predictor(precision: str):
        model = build_model(mp, mixed_precision=precision == "mixed_float16")
        load_weights(model, checkpoint)
        return make_predict(model, fov_zyx(mp))

    print(f"FIB-25 ts2_dev: {a.tiles} tiles of z,y,x {tuple(a.size)}, fib25 weights, parallel_fills "
          f"{a.parallel_fills}, {os.cpu_count()} CPUs", flush=True)
    predict = predictor("float32")
    predict(np.zeros((1, *fov_zyx(mp), 2), np.float32))  # trace before timing
    reference = None
    rows = []
    for k in a.k:
        t0 = time.perf_counter()
        segs, calls, fovs, full_calls, full_fovs = [], 0, 0, 0, 0
        for first in range(0, a.tiles, k):
            works = [lambda p, b=b: segment_volume(raw[b], p, mp, params, log=lambda s: None)
                     for b in boxes[first:first + k]]
            results, stats = run_side_by_side(works, predict)
            segs += [r.segmentation for r in results]
            print(f"  K={k}: tiles {first}..{first + len(results) - 1}: {stats.fovs} FOVs in {stats.calls} calls, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            calls += stats.calls
            fovs += stats.fovs
            full_calls += stats.full_calls
            full_fovs += stats.full_fovs
        wall = time.perf_counter() - t0
        if reference is None:
            reference = segs
        same = all(np.array_equal(s, r) for s, r in zip(segs, reference))
        rows.append((k, calls, fovs, fovs / calls, full_fovs / max(full_calls, 1), wall, fovs / wall, same))
        print(f"K={k}: {calls} calls, {fovs} FOVs, {fovs / calls:.2f} FOV/call, "
              f"{full_fovs / max(full_calls, 1):.2f} FOV/call while all K tiles work, {wall:.0f} s, "
              f"{fovs / wall:.2f} FOV/s, same segmentations as K={a.k[0]}: {same}", flush=True)
    print()
    print(f"{'K':>3} {'calls':>7} {'FOVs':>7} {'FOV/call':>9} {'full':>6} {'target':>7} {'wall s':>7} {'FOV/s':>6}  same")
    for k, calls, fovs, per, full, wall, rate, same in rows:
        print(f"{k:>3} {calls:>7} {fovs:>7} {per:>9.2f} {full:>6.2f} {0.9 * k:>7.1f} {wall:>7.0f} {rate:>6.2f}  {same}")

    def quality(segs) -> tuple[float, float]:
        """VI (split+merge) and ARE of the tiles against the groundtruth, summed over tiles / mean."""
        vi, are = 0.0, 0.0
        for s, b in zip(segs, boxes):
            m = compare(s.astype(np.uint64), stack[b].astype(np.uint64))
            vi += m["vi_split"] + m["vi_merge"]
            are += m["adapted_rand_error"]
        return vi / len(segs), are / len(segs)

    vi32, are32 = quality(reference)
    print(f"\nfloat32: mean VI {vi32:.3f}, mean adapted Rand error {are32:.3f} against ts2_dev's stack")
    if a.precision == "mixed_float16":
        p16 = predictor("mixed_float16")
        p16(np.zeros((1, *fov_zyx(mp), 2), np.float32))
        t0 = time.perf_counter()
        works = [lambda p, b=b: segment_volume(raw[b], p, mp, params, log=lambda s: None) for b in boxes]
        results, stats = run_side_by_side(works, p16)
        wall = time.perf_counter() - t0
        segs16 = [r.segmentation for r in results]
        vi16, are16 = quality(segs16)
        agree = [compare(s16.astype(np.uint64) + 1, s32.astype(np.uint64) + 1) for s16, s32 in zip(segs16, reference)]
        print(f"mixed_float16: {stats.fovs} FOVs in {wall:.0f} s ({stats.fovs / wall:.2f} FOV/s, K={a.tiles}); "
              f"mean VI {vi16:.3f}, mean ARE {are16:.3f} against the stack; against float32: mean ARE "
              f"{np.mean([m['adapted_rand_error'] for m in agree]):.4f}, identical tiles "
              f"{sum(np.array_equal(x, y) for x, y in zip(segs16, reference))}/{len(segs16)}")


if __name__ == "__main__":
    main()
