"""Benchmark inference seed finding (FFN's PolicyPeaks, hpcffn.ffn.inference.peak_seeds).

Ours: Sobel edges, adaptive threshold, `edt`'s float32 distance transform, arrays freed as soon
as used. Baseline, the straightforward version of the same policy: float32 copy of the image,
scipy's distance_transform_edt (float64 output plus an int32 feature transform), a validity
mask and full-volume noise. Each runs in a fresh process on the same random image, so the peak
(VmHWM) is per measurement; both must return the same seeds (checked).

    python benchmarks/bench_seeds.py [--size 200]

Prints time, peak memory above the loaded image (bytes per voxel) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_data_stages import peak_mb, run_worker

FOV = (33, 33, 33)


def baseline_seeds(image: np.ndarray, params) -> np.ndarray:
    from scipy import ndimage
    from skimage.feature import peak_local_max

    img = image.astype(np.float32)
    edges = ndimage.generic_gradient_magnitude(img, ndimage.sobel)
    smoothed = ndimage.gaussian_filter(edges, sigma=49.0 / 6.0, mode="reflect")
    floor = params.seed_threshold * float(np.percentile(edges, 99))
    boundary = (edges > smoothed) & (edges >= floor)
    dt = ndimage.distance_transform_edt(~boundary).astype(np.float32)
    valid = np.zeros(image.shape, bool)
    r = [f // 2 for f in FOV]
    valid[tuple(slice(ri, s - ri) for ri, s in zip(r, image.shape))] = True
    dt[~valid] = 0
    dt += np.random.default_rng(42).random(dt.shape, dtype=np.float32) * np.float32(1e-4)
    peaks = peak_local_max(dt, min_distance=params.seed_min_distance, threshold_abs=0.5, exclude_border=False)
    peaks = np.asarray(peaks, dtype=np.int64).reshape(-1, 3)
    np.random.default_rng(0).shuffle(peaks)
    return peaks


def worker(kind: str, work: Path) -> dict:
    import edt  # noqa: F401 - imported before the baseline measurement, as scipy and skimage are
    import scipy.ndimage  # noqa: F401
    import skimage.feature  # noqa: F401

    from hpcffn.ffn.inference import peak_seeds
    from hpcffn.core.params import InferenceParams

    image = np.load(work / "image.npy")
    before = peak_mb()
    t = time.perf_counter()
    fn = peak_seeds if kind == "ours" else lambda im, fov, p: baseline_seeds(im, p)
    seeds = fn(image, FOV, InferenceParams())
    wall = time.perf_counter() - t
    np.save(work / f"{kind}.npy", seeds)
    return {"wall": wall, "peak_mb": peak_mb() - before, "seeds": len(seeds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=200, help="edge of the cubic test image (564 = a 500^3 tile's infer box)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, Path(a.workdir))))
        return
    work = Path(tempfile.mkdtemp(prefix="hpcffn-bench-seeds-"))
    rng = np.random.default_rng(0)
    image = np.empty((a.size,) * 3, np.uint8)
    for z in range(a.size):
        image[z] = rng.integers(0, 256, (a.size, a.size), dtype=np.uint8)
    np.save(work / "image.npy", image)
    res = {}
    for kind in ("ours", "baseline"):
        res[kind] = run_worker(kind, work, script=__file__)
    same = np.array_equal(np.load(work / "ours.npy"), np.load(work / "baseline.npy"))
    voxels = a.size ** 3
    print(f"peak seeds on {a.size}^3 ({voxels / 1e6:.1f} M voxels), FOV {FOV[0]}^3; same seeds: {same}")
    for kind, r in res.items():
        print(f"  {kind:8s} {r['wall']:6.2f} s  peak +{r['peak_mb']:7.0f} MB = {r['peak_mb'] * 2**20 / voxels:5.1f} B/voxel"
              f"  {r['seeds']} seeds")
    o, b = res["ours"], res["baseline"]
    print(f"  ratio baseline/ours: time {b['wall'] / o['wall']:.2f}x, peak memory {b['peak_mb'] / max(o['peak_mb'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
