"""Synthetic labelled volumes of well-separated balls, for tests, benchmarks and smoke runs.

Bright objects on a dark background with noise: a scene where a correctly working FFN
reaches a near-perfect segmentation quickly, so training/inference bugs show up as bad
scores rather than hiding in hard data.
"""

from __future__ import annotations

import numpy as np


def balls_volume(shape=(48, 48, 48), radius=(5, 8), gap=3, seed=0, noise=12.0,
                 inside=190.0, outside=60.0, max_objects=200):
    """(raw uint8, labels uint64) with non-overlapping balls separated by >= `gap` voxels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint64)
    zz, yy, xx = np.indices(shape)
    placed: list[tuple[np.ndarray, int]] = []
    tries = 0
    while len(placed) < max_objects and tries < 2000:
        tries += 1
        r = int(rng.integers(radius[0], radius[1] + 1))
        c = np.array([rng.integers(r + 1, s - r - 1) for s in shape])
        if any(np.linalg.norm(c - c2) < r + r2 + gap for c2, r2 in placed):
            continue
        placed.append((c, r))
        ball = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        labels[ball] = len(placed)
    image = np.where(labels > 0, inside, outside) + rng.normal(0, noise, shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def sample_centers(labels: np.ndarray, n: int, margin, seed=0, background_fraction=0.3):
    """z,y,x centres at least `margin` (z,y,x) from every border: mostly in objects, some in background."""
    rng = np.random.default_rng(seed)
    inner = np.zeros(labels.shape, bool)
    inner[tuple(slice(m, s - m) for m, s in zip(margin, labels.shape))] = True
    fg = np.argwhere(inner & (labels > 0))
    bg = np.argwhere(inner & (labels == 0))
    n_bg = round(n * background_fraction) if len(bg) else 0
    picks = [fg[rng.integers(0, len(fg), n - n_bg)]]
    if n_bg:
        picks.append(bg[rng.integers(0, len(bg), n_bg)])
    out = np.concatenate(picks)
    rng.shuffle(out)
    return out


def write_coordinates(path, centers_zyx, volume_name: str) -> None:
    """GZIP TFRecord in FFN's schema: `center` [x, y, z] int64 and `label_volume_name` bytes."""
    import tensorflow as tf

    from hpcffn.core.atomic import atomic_path

    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    with atomic_path(path, suffix=".tfrecord.gz") as tmp, tf.io.TFRecordWriter(str(tmp), opts) as w:
        for z, y, x in centers_zyx:
            ex = tf.train.Example(features=tf.train.Features(feature={
                "center": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x), int(y), int(z)])),
                "label_volume_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[volume_name.encode()])),
            }))
            w.write(ex.SerializeToString())


def write_volume(path, raw: np.ndarray, labels: np.ndarray | None = None) -> None:
    """HDF5 with `raw` (and `stack`), FFN's dataset names."""

    from hpcffn.io.volumes import atomic_h5

    with atomic_h5(path) as f:
        f.create_dataset("raw", data=raw)
        if labels is not None:
            f.create_dataset("stack", data=labels)
