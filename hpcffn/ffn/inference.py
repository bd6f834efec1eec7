"""Flood-filling inference on one sub-volume: peak seeds, FOV move queue, segment acceptance.

For each seed (FFN's PolicyPeaks) not in or near an existing segment, a canvas of logits starts
at logit(0.05) with logit(0.95) at the seed; the model runs at the seed, and the FOV moves by
+-deltas wherever the probability at the centre of the next FOV's face reaches the move
threshold, until the queue is empty. Voxels >= segment_threshold (connected to the seed, not
already taken) become a segment when it has >= min_segment_size voxels. Moves that do not
overlap are evaluated in one batch. Progress (segmentation, next seed, next id) is saved
between segments so a requeued job continues where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.ffn.model import CANVAS_LOGIT_LIMIT
from hpcffn.core.params import InferenceParams, ModelParams

STATE_FORMAT = 1


def _cpus() -> int:
    """CPUs this process may use (SLURM's cgroup/affinity), for the multi-threaded distance transform."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def peak_seeds(image: np.ndarray, fov_zyx, params: InferenceParams, rng_seed: int = 0) -> np.ndarray:
    """FFN's PolicyPeaks: peaks of the distance transform of the thresholded edge image.

    Boundary voxels are those whose Sobel gradient magnitude exceeds their Gaussian-smoothed
    neighbourhood (FFN's adaptive threshold) and `seed_threshold` times the 99th percentile of
    the edge strength (so flat, noisy regions do not count as boundaries; 0 gives FFN's purely
    adaptive policy). Peaks are shuffled
    with a fixed seed, as FFN does, and only those where the whole FOV fits are kept.

    Memory: about 14 bytes per voxel at the peak (a 564^3 infer box: ~2.5 GB), because arrays are
    freed as soon as they are used and the distance transform comes from `edt` (float32, the
    same values as scipy's, whose feature transform alone takes 12 bytes per voxel).
    """
    import edt
    from scipy import ndimage
    from skimage.feature import peak_local_max

    edges = ndimage.generic_gradient_magnitude(image, ndimage.sobel, output=np.float32)
    floor = params.seed_threshold * float(np.percentile(edges, 99)) if edges.size else 0.0
    boundary = edges >= floor
    boundary &= edges > ndimage.gaussian_filter(edges, sigma=49.0 / 6.0, output=np.float32, mode="reflect")
    del edges
    # Without any boundary, distances are measured to the volume's faces (seeds go in the middle).
    dt = edt.edt(~boundary, black_border=not boundary.any(), parallel=_cpus())
    del boundary
    # Only positions where the FOV fits can be segmented from: zero the others first.
    for axis, ri in enumerate(f // 2 for f in fov_zyx):
        dt[(slice(None),) * axis + (slice(0, ri),)] = 0
        dt[(slice(None),) * axis + (slice(max(0, dt.shape[axis] - ri), None),)] = 0
    # Tiny fixed noise breaks ties on plateaus of the distance transform (one peak per plateau),
    # added a slab at a time.
    rng = np.random.default_rng(42)
    for z in range(dt.shape[0]):
        dt[z] += rng.random(dt.shape[1:], dtype=np.float32) * np.float32(1e-4)
    peaks = peak_local_max(dt, min_distance=params.seed_min_distance, threshold_abs=0.5, exclude_border=False)
    peaks = np.asarray(peaks, dtype=np.int64).reshape(-1, 3)
    np.random.default_rng(rng_seed).shuffle(peaks)
    return peaks


# segment_at's answer when a stop request abandoned the fill.
INTERRUPTED = np.zeros(0, bool)


@dataclass
class SegmentResult:
    segmentation: np.ndarray
    finished: bool
    segments: int
    seeds_tried: int
    fov_evaluations: int


class Canvas:
    """The state of one sub-volume's segmentation and the logits of the object being filled."""

    def __init__(self, image: np.ndarray, predict, model_params: ModelParams, params: InferenceParams):
        from hpcffn.ffn.model import (
            LOGIT_005,
            deltas_zyx,
            fov_zyx,
            logit,
            normalize_image,
        )

        self.image = normalize_image(image, model_params)
        self.shape = self.image.shape
        self.fov = fov_zyx(model_params)
        self.radius = tuple(f // 2 for f in self.fov)
        self.deltas = deltas_zyx(model_params)
        self.params = params
        self.predict = predict
        self.logits = np.full(self.shape, LOGIT_005, np.float32)
        self.seg = np.zeros(self.shape, np.uint64)
        self.blocked: np.ndarray | None = None  # masked voxels: never seeded, never segmented
        self.move_logit = logit(params.move_threshold)
        self.segment_logit = logit(params.segment_threshold)
        self.evaluations = 0
        self._faces = []
        for axis in range(3):
            if self.deltas[axis]:
                for sign in (-1, 1):
                    off = [0, 0, 0]
                    off[axis] = sign * self.deltas[axis]
                    self._faces.append(tuple(off))

    def is_blocked(self, pos) -> bool:
        return self.blocked is not None and bool(self.blocked[pos])

    def fov_fits(self, pos) -> bool:
        return all(r <= p < s - r for p, r, s in zip(pos, self.radius, self.shape))

    def near_segment(self, pos) -> bool:
        """A seed in, or within min_boundary_dist of, an existing segment is skipped."""
        mbd = tuple(reversed(self.params.min_boundary_dist))  # x,y,z -> z,y,x
        sel = tuple(slice(max(0, p - m), p + m + 1) for p, m in zip(pos, mbd))
        return bool(np.any(self.seg[sel]))

    def _fov(self, pos):
        return tuple(slice(p - r, p + r + 1) for p, r in zip(pos, self.radius))

    def _pick_batch(self, queue: deque, limit: int) -> list:
        """Up to `limit` queued positions whose FOVs do not overlap (their updates are independent)."""
        batch = [queue.popleft()]
        if limit > 1:
            keep = deque()
            while queue and len(batch) < limit:
                cand = queue.popleft()
                if all(any(abs(a - b) >= f for a, b, f in zip(cand, other, self.fov)) for other in batch):
                    batch.append(cand)
                else:
                    keep.append(cand)
            queue.extendleft(reversed(keep))
        return batch

    def segment_at(self, start, stop=None) -> tuple[np.ndarray | None, tuple]:
        """Flood-fill from `start`; returns the accepted mask (in the bounding box) or None, and the box.

        A `stop` that turns true mid-fill (a signal before the time limit) abandons this fill:
        the canvas is reset and INTERRUPTED is returned, so the seed is tried again on resume
        instead of the job running into SIGKILL inside one long fill.
        """
        from hpcffn.ffn.model import LOGIT_005, LOGIT_095

        start = tuple(int(v) for v in start)
        self.logits[start] = LOGIT_095
        lo = list(start)
        hi = [p + 1 for p in start]
        queue: deque = deque([start])
        queued = {start}
        while queue:
            if stop:
                self.logits[tuple(slice(a, b) for a, b in zip(lo, hi))] = LOGIT_005
                return INTERRUPTED, ()
            batch = self._pick_batch(queue, self.params.batch_size)
            inputs = np.empty((len(batch),) + self.fov + (2,), np.float32)
            for i, pos in enumerate(batch):
                sl = self._fov(pos)
                inputs[i, ..., 0] = self.image[sl]
                inputs[i, ..., 1] = self.logits[sl]
            out = self.predict(inputs)
            self.evaluations += len(batch)
            for i, pos in enumerate(batch):
                sl = self._fov(pos)
                np.clip(out[i, ..., 0], -CANVAS_LOGIT_LIMIT, CANVAS_LOGIT_LIMIT, out=self.logits[sl])
                lo = [min(a, s.start) for a, s in zip(lo, sl)]
                hi = [max(b, s.stop) for b, s in zip(hi, sl)]
                moves = []
                for off in self._faces:
                    target = tuple(p + o for p, o in zip(pos, off))
                    if target in queued or not self.fov_fits(target):
                        continue
                    score = self.logits[target]
                    if score >= self.move_logit:
                        moves.append((score, target))
                for _, target in sorted(moves, reverse=True):
                    queued.add(target)
                    queue.append(target)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask = (self.logits[box] >= self.segment_logit) & (self.seg[box] == 0)
        if self.blocked is not None:
            mask &= ~self.blocked[box]
        self.logits[box] = LOGIT_005
        local = tuple(p - a for p, a in zip(start, lo))
        if not mask[local]:
            return None, box
        from scipy import ndimage

        comp, _ = ndimage.label(mask)
        mask = comp == comp[local]
        if int(mask.sum()) < self.params.min_segment_size:
            return None, box
        return mask, box


def fingerprint(**inputs) -> str:
    """A short hash of what a resumed run must share with the run that saved the state."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(path: Path, seg: np.ndarray, seeds: np.ndarray, next_seed: int, next_id: int, fp: str) -> None:
    """Resumable progress, written atomically (HDF5)."""

    from hpcffn.io.volumes import atomic_h5

    with atomic_h5(path) as f:
        f.create_dataset("seg", data=seg, compression="gzip", compression_opts=1)
        f.create_dataset("seeds", data=seeds)
        f.attrs.update({"format": STATE_FORMAT, "next_seed": next_seed, "next_id": next_id, "fingerprint": fp})


def load_state(path: Path, fp: str, shape):
    """(seg, seeds, next_seed, next_id) from a matching saved state, else None."""
    import h5py

    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != STATE_FORMAT or f.attrs.get("fingerprint") != fp:
                return None
            seg = f["seg"][...]
            if seg.shape != tuple(shape):
                return None
            return seg, f["seeds"][...], int(f.attrs["next_seed"]), int(f.attrs["next_id"])
    except OSError:
        return None


def make_predict(model, xla: bool = False):
    """A batched forward pass: numpy [n, z, y, x, 2] -> numpy logits [n, z, y, x, 1]."""
    import tensorflow as tf

    fn = tf.function(model.__call__, jit_compile=xla, reduce_retracing=True)

    def predict(batch: np.ndarray) -> np.ndarray:
        return fn(tf.constant(batch)).numpy()

    return predict


def segment_volume(image: np.ndarray, predict, model_params: ModelParams, params: InferenceParams,
                   state_path: Path | None = None, fp: str = "", stop=None, log=print,
                   mask: np.ndarray | None = None) -> SegmentResult:
    """Segment a whole sub-volume; stops early (finished=False) after saving state when `stop` is set.

    `mask` (true = masked, the volume's mask): no seed there, and no segment takes those voxels.
    """
    canvas = Canvas(image, predict, model_params, params)
    if mask is not None:
        if mask.shape != image.shape:
            raise HpcffnError(f"mask shape {mask.shape} differs from the image box {image.shape}")
        canvas.blocked = mask
    resumed = load_state(state_path, fp, image.shape) if state_path else None
    if resumed is not None:
        canvas.seg, seeds, next_seed, next_id = resumed
        log(f"hpcffn infer: resumed at seed {next_seed}/{len(seeds)} with {next_id - 1} segments")
    else:
        seeds = peak_seeds(image, canvas.fov, params)
        next_seed, next_id = 0, 1
    last_save = time.monotonic()
    t0 = time.monotonic()
    while next_seed < len(seeds):
        if stop:
            if state_path is not None:
                save_state(state_path, canvas.seg, seeds, next_seed, next_id, fp)
            return SegmentResult(canvas.seg, False, next_id - 1, next_seed, canvas.evaluations)
        pos = tuple(int(v) for v in seeds[next_seed])
        next_seed += 1
        if canvas.seg[pos] or canvas.is_blocked(pos) or not canvas.fov_fits(pos) or canvas.near_segment(pos):
            continue
        mask, box = canvas.segment_at(pos, stop)
        if mask is INTERRUPTED:
            next_seed -= 1  # this seed's fill was abandoned: start it again on resume
            continue  # the loop's stop check saves the state and returns
        if mask is not None:
            canvas.seg[box][mask] = next_id
            next_id += 1
        if state_path is not None and time.monotonic() - last_save >= params.checkpoint_minutes * 60:
            save_state(state_path, canvas.seg, seeds, next_seed, next_id, fp)
            last_save = time.monotonic()
            log(f"hpcffn infer: seed {next_seed}/{len(seeds)}, {next_id - 1} segments, "
                f"{canvas.evaluations / max(time.monotonic() - t0, 1e-9):.1f} FOV/s; state saved")
    return SegmentResult(canvas.seg, True, next_id - 1, next_seed, canvas.evaluations)
