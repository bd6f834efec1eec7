"""Benchmark inference seed finding (FFN's PolicyPeaks, hpcffn.ffn.inference.peak_seeds).

Ours: Sobel edges, adaptive threshold, `edt`'s squared distances rooted slice by slice, the
float64 noise and maximum filter a z-slab at a time. Baseline, FFN's PolicyPeaks written the
straightforward way: scipy's distance_transform_edt (float64 output plus an int32 feature
transform), the whole volume's float64 noise (NumPy's legacy generator, seed 42) and
skimage's peak_local_max. Each runs in a fresh process on the same normalised random image,
so the peak (VmHWM) is per measurement; both must return the same seeds (checked).

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


def baseline_seeds(image: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    from skimage.feature import peak_local_max

    edges = ndimage.generic_gradient_magnitude(image.astype(np.float32), ndimage.sobel)
    smoothed = np.zeros(edges.shape, np.float32)
    ndimage.gaussian_filter(edges, 49.0 / 6.0, output=smoothed, mode="reflect")
    boundary = edges > smoothed
    dt = ndimage.distance_transform_edt(1 - boundary).astype(np.float32)
    noise = np.random.RandomState(42).random_sample(dt.shape) * 1e-4
    peaks = peak_local_max(dt + noise, min_distance=3, threshold_abs=0, threshold_rel=0)
    return np.array(sorted(tuple(p) for p in peaks), dtype=np.int64).reshape(-1, 3)


def worker(kind: str, work: Path) -> dict:
    import edt  # noqa: F401 - imported before the baseline measurement, as scipy and skimage are
    import scipy.ndimage  # noqa: F401
    import skimage.feature  # noqa: F401

    from hpcffn.core.params import InferenceParams
    from hpcffn.ffn.inference import peak_seeds

    image = (np.load(work / "image.npy").astype(np.float32) - 128.0) / 33.0  # what the network sees
    before = peak_mb()
    t = time.perf_counter()
    fn = peak_seeds if kind == "ours" else lambda im, fov, p: baseline_seeds(im)
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
