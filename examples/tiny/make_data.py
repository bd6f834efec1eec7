"""Write the tiny example's synthetic dataset: grayscale and groundtruth TIF slice folders.

64 x 128 x 128 (z,y,x) voxels holding well-separated ellipsoid "cells": bright interiors with a
dark membrane on a mid-gray, noisy background, which a depth-2 FFN learns in a few hundred CPU
steps. Groundtruth is saved as the lab's data is: white (255) background, black (0) objects.

    python examples/tiny/make_data.py [--out examples/tiny/data] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHAPE = (64, 128, 128)  # z, y, x


def make_volume(seed: int = 0, shape=SHAPE, n_objects: int = 16):
    """Return (raw uint8, labels uint16) with n_objects ellipsoids that never touch."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    labels = np.zeros(shape, np.uint16)
    placed = []
    tries = 0
    while len(placed) < n_objects and tries < 5000:
        tries += 1
        radii = rng.uniform(6, 11, size=3)
        center = np.array([rng.uniform(r + 1, n - r - 1) for r, n in zip(radii, shape)])
        # keep a gap of at least 4 voxels between objects so components stay separate
        if any(np.linalg.norm(center - c) < r.max() + radii.max() + 4 for c, r in placed):
            continue
        inside = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + ((xx - center[2]) / radii[2]) ** 2 <= 1
        labels[inside] = len(placed) + 1
        placed.append((center, radii))

    obj = labels > 0
    # membrane: object voxels with a background 6-neighbour
    edge = np.zeros_like(obj)
    for axis in range(3):
        for step in (1, -1):
            edge |= obj & ~np.roll(obj, step, axis=axis)
    raw = np.full(shape, 110.0)
    raw[obj] = 175.0
    raw[edge] = 45.0
    raw = _blur(raw)
    raw += rng.normal(0, 12, size=shape)
    return np.clip(raw, 0, 255).astype(np.uint8), labels


def _blur(vol: np.ndarray) -> np.ndarray:
    """A small separable [1 2 1]/4 smoothing, enough to soften the edges."""
    out = vol
    for axis in range(3):
        out = (np.roll(out, 1, axis) + 2 * out + np.roll(out, -1, axis)) / 4
    return out


def write_slices(folder: Path, volume: np.ndarray, prefix: str) -> None:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / f"{prefix}_{z:04d}.tif", plane)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    raw, labels = make_volume(args.seed)
    gt = np.where(labels > 0, 0, 255).astype(np.uint8)  # white background, black objects
    write_slices(args.out / "raw", raw, "raw")
    write_slices(args.out / "gt", gt, "gt")
    print(f"wrote {raw.shape[0]} slices of {raw.shape[1]}x{raw.shape[2]} to {args.out}/raw and {args.out}/gt "
          f"({int(labels.max())} objects)")


if __name__ == "__main__":
    main()
