"""Flood-filling inference on one sub-volume, following Google FFN's inference (ffn/inference/).

The default policies reproduce FFN's `Canvas.segment_all` with `PolicyPeaks` seeds and the
`FaceMaxMovementPolicy` (docs/train_infer.md, "Inference algorithm", lists the rules):

- seeds: local maxima of the distance to the nearest edge voxel, visited in z,y,x raster order;
- a fill starts from a seed not in, and not within `min_boundary_dist` of, a segment; the seed
  canvas holds logits, NaN where nothing was predicted yet (read as `pad_value`);
- each FOV's prediction is written into the canvas, except that a voxel once below 0.5 is never
  raised again (FFN's `disco_seed_threshold`); the FOV then moves to the maximum of each face
  of the ±deltas cube that reaches `move_threshold`, in a first-in first-out queue, never twice
  into the same cell of a lattice of deltas around the seed;
- the fill stops when the seed voxel itself drops below `move_threshold` (the seed is then
  rejected); otherwise the voxels >= `segment_threshold` not yet in a segment become one when
  they are >= `min_segment_size` (no connected-component step).

The probabilities in InferenceParams are used as FFN uses them: converted to float32 logits.
`movement_policy: face_centre` (moves to face centres, batched FOVs, the seed's connected part
becomes the segment) and `seed_policy: peaks_shuffled` (peaks in a fixed shuffled order) keep
hpcffn 0.1's rules.
Progress (segmentation with FFN's -1 markers, seed list, next seed, next id) is saved between
fills, so a requeued job continues exactly where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import InferenceParams, ModelParams
from hpcffn.ffn.canvas import INTERRUPTED, Canvas

STATE_FORMAT = 3  # 3: with the origins of the segments made so far
# The noise that breaks ties between equal distances in PolicyPeaks: NumPy's legacy generator
# seeded with 42, uniform [0, 1) times 1e-4, in float64, as FFN adds it.
PEAK_NOISE_SEED = 42
PEAK_NOISE_SCALE = 1e-4


def _cpus() -> int:
    """CPUs this process may use (SLURM's cgroup/affinity), for the multi-threaded distance transform."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Seeds -----------------------------------------------------------------------------------------


def _boundaries(image: np.ndarray, params: InferenceParams, blocked: np.ndarray | None) -> np.ndarray:
    """FFN's edge voxels: Sobel gradient magnitude above its Gaussian-smoothed (sigma 49/6) self.

    `seed_threshold` > 0 also requires the edge to reach that fraction of the 99th percentile
    of edge strength (hpcffn 0.1; FFN: 0). Masked voxels count as edges, as in FFN.
    """
    from scipy import ndimage

    edges = ndimage.generic_gradient_magnitude(image.astype(np.float32, copy=False), ndimage.sobel,
                                               output=np.float32)
    boundary = edges > ndimage.gaussian_filter(edges, sigma=49.0 / 6.0, output=np.float32, mode="reflect")
    if params.seed_threshold > 0 and edges.size:
        boundary &= edges >= params.seed_threshold * float(np.percentile(edges, 99))
    del edges
    if blocked is not None:
        boundary |= blocked
    return boundary


def _edge_distance(boundary: np.ndarray) -> np.ndarray:
    """Euclidean distance to the nearest boundary voxel, float32, equal to scipy's
    distance_transform_edt(...).astype(float32): `edt`'s exact squared distances, square-rooted
    in float64 and rounded to float32, a z-slice at a time (4 bytes per voxel instead of scipy's
    8 + 12). Without any boundary, distances are measured to the volume's faces."""
    import edt

    dist = edt.edtsq(~boundary, black_border=not boundary.any(), parallel=_cpus())
    for z in range(dist.shape[0]):
        dist[z] = np.sqrt(dist[z].astype(np.float64))
    return dist


def local_maxima(dist: np.ndarray, min_distance: int, threshold: float = 0.0, slab: int = 32) -> np.ndarray:
    """FFN's peak finding, in raster (z,y,x) order:
    skimage.feature.peak_local_max(dist + RandomState(42).random_sample(shape) * 1e-4,
    min_distance, threshold_abs=threshold, threshold_rel=0) with its default border exclusion.

    Computed a z-slab at a time (with min_distance planes of halo), so the float64 noisy copy
    and its maximum filter never exist for the whole volume; the noise stream is the same.
    peak_local_max's spacing pass is not needed: two maxima of overlapping windows would have
    to be exactly equal, which the noise rules out.
    """
    from scipy import ndimage

    md = int(min_distance)
    nz = dist.shape[0]
    rng = np.random.RandomState(PEAK_NOISE_SEED)
    plane = dist.shape[1:]
    found = []
    buf = np.empty((0,) + plane, np.float64)
    b0 = 0  # first plane held in buf
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        lo, hi = max(0, z0 - md), min(nz, z1 + md)
        b1 = b0 + len(buf)
        new = rng.random_sample((hi - b1,) + plane) * PEAK_NOISE_SCALE
        new += dist[b1:hi]
        buf = np.concatenate([buf[lo - b0:], new])
        b0 = lo
        is_max = buf == ndimage.maximum_filter(buf, size=2 * md + 1, mode="nearest")
        is_max &= buf > threshold
        core = is_max[z0 - lo: z1 - lo]
        # exclude_border: no peak within min_distance of any face
        core[: max(0, md - z0)] = False
        core[max(0, nz - md - z0):] = False
        core[:, :md] = False
        core[:, max(0, plane[0] - md):] = False
        core[:, :, :md] = False
        core[:, :, max(0, plane[1] - md):] = False
        pts = np.argwhere(core)
        pts[:, 0] += z0
        found.append(pts)
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 3), np.int64)


def policy_peaks(image: np.ndarray, params: InferenceParams, blocked: np.ndarray | None = None) -> np.ndarray:
    """FFN's PolicyPeaks: maxima of the distance to the nearest edge, sorted z,y,x ascending.

    `image` is what the network sees (FFN: the normalised image). All maxima are returned; the
    caller skips those where the FOV does not fit, as FFN's seed policy does.
    Memory: about 9 bytes per voxel at the peak (float32 edges, bool boundary, float32 distances).
    """
    dist = _edge_distance(_boundaries(image, params, blocked))
    peaks = local_maxima(dist, params.seed_min_distance)
    if blocked is not None and len(peaks):
        peaks = peaks[~blocked[tuple(peaks.T)]]
    return peaks


def shuffled_peaks(image: np.ndarray, fov_zyx, params: InferenceParams, blocked: np.ndarray | None = None,
                   rng_seed: int = 0) -> np.ndarray:
    """Shuffled peak seeds (`seed_policy: peaks_shuffled`, hpcffn 0.1's): maxima at least 0.5 voxel from an edge
    and `seed_min_distance` apart where the whole FOV fits, in a fixed shuffled order."""
    from skimage.feature import peak_local_max

    dist = _edge_distance(_boundaries(image, params, blocked))
    for axis, ri in enumerate(f // 2 for f in fov_zyx):
        dist[(slice(None),) * axis + (slice(0, ri),)] = 0
        dist[(slice(None),) * axis + (slice(max(0, dist.shape[axis] - ri), None),)] = 0
    rng = np.random.default_rng(42)
    for z in range(dist.shape[0]):
        dist[z] += rng.random(dist.shape[1:], dtype=np.float32) * np.float32(1e-4)
    peaks = peak_local_max(dist, min_distance=params.seed_min_distance, threshold_abs=0.5, exclude_border=False)
    peaks = np.asarray(peaks, dtype=np.int64).reshape(-1, 3)
    if blocked is not None and len(peaks):
        peaks = peaks[~blocked[tuple(peaks.T)]]
    np.random.default_rng(rng_seed).shuffle(peaks)
    return peaks


def peak_seeds(image: np.ndarray, fov_zyx, params: InferenceParams, blocked: np.ndarray | None = None) -> np.ndarray:
    """The seed list of `params.seed_policy` (int64 z,y,x rows), in the order they are tried."""
    if params.seed_policy == "peaks_shuffled":
        return shuffled_peaks(image, fov_zyx, params, blocked)
    if params.seed_policy == "invert_origins":
        raise HpcffnError("seed_policy invert_origins seeds at a previous segmentation's origins: "
                          "give that segmentation (--origins FWD.h5)")
    return policy_peaks(image, params, blocked)


@dataclass
class SegmentResult:
    segmentation: np.ndarray  # uint64, 0 unsegmented
    finished: bool
    segments: int
    seeds_tried: int
    fov_evaluations: int
    seeds: int = 0  # seeds the policy found
    fills: int = 0  # fills started (this run)
    fov_wasted: int = 0  # of fov_evaluations: speculative fills' FOVs that were thrown away (parallel_fills > 1)
    origins: dict = field(default_factory=dict)  # segment id -> io.origins.Origin (FFN's origins)


def fingerprint(**inputs) -> str:
    """A short hash of what a resumed run must share with the run that saved the state."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(path: Path, seg: np.ndarray, seeds: np.ndarray, next_seed: int, next_id: int, fp: str,
               origins: dict | None = None) -> None:
    """Resumable progress (the segmentation with its -1 markers, the origins), written atomically (HDF5)."""

    from hpcffn.io import origins as origin_table
    from hpcffn.io.volumes import atomic_h5

    with atomic_h5(path) as f:
        f.create_dataset("seg", data=seg, compression="gzip", compression_opts=1)
        f.create_dataset("seeds", data=seeds)
        origin_table.write(f, origins or {})
        f.attrs.update({"format": STATE_FORMAT, "next_seed": next_seed, "next_id": next_id, "fingerprint": fp})


def load_state(path: Path, fp: str, shape):
    """(seg, seeds, next_seed, next_id, origins) from a matching saved state, else None."""
    import h5py

    from hpcffn.io import origins as origin_table

    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != STATE_FORMAT or f.attrs.get("fingerprint") != fp:
                return None
            seg = f["seg"][...]
            if seg.shape != tuple(shape):
                return None
            return (seg, f["seeds"][...], int(f.attrs["next_seed"]), int(f.attrs["next_id"]),
                    origin_table.read(f) or {})
    except OSError:
        return None


def output_segmentation(seg: np.ndarray) -> np.ndarray:
    """The canvas segmentation as written: uint64, FFN's -1 markers as 0."""
    out = seg.astype(np.uint64)
    out[seg < 0] = 0
    return out


def make_predict(model, fov_zyx, xla: bool = False):
    """The forward pass as one traced graph: numpy [n, z, y, x, 2] -> numpy logits [n, z, y, x, 1].

    The input signature is fixed (any batch size, the model's FOV), so it is traced once.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None,) + tuple(fov_zyx) + (2,), tf.float32)
    fn = tf.function(model.__call__, input_signature=[spec], jit_compile=xla)

    def predict(batch: np.ndarray) -> np.ndarray:
        return fn(batch).numpy()

    return predict


def segment_volume(image: np.ndarray, predict, model_params: ModelParams, params: InferenceParams,
                   state_path: Path | None = None, fp: str = "", stop=None, log=print,
                   mask: np.ndarray | None = None, seeds: np.ndarray | None = None) -> SegmentResult:
    """Segment a whole sub-volume (FFN's segment_all); stops early (finished=False) after saving
    state when `stop` is set.

    `seeds` (z,y,x rows, tried in that order): instead of the seed policy's (e.g. the inverted
    origins of a previous pass); the caller's fingerprint must cover them.

    `mask` (true = masked, the volume's mask): no seed or FOV centre there, and no segment takes
    those voxels; they count as edges for the seed policy.
    """
    canvas = Canvas(image, predict, model_params, params)
    if mask is not None:
        if mask.shape != image.shape:
            raise HpcffnError(f"mask shape {mask.shape} differs from the image box {image.shape}")
        canvas.blocked = mask
    resumed = load_state(state_path, fp, image.shape) if state_path else None
    if resumed is not None:
        canvas.seg, seeds, next_seed, next_id, canvas.origins = resumed
        log(f"hpcffn infer: resumed at seed {next_seed}/{len(seeds)} with {next_id - 1} segments")
    else:
        if seeds is None:
            seeds = peak_seeds(canvas.image, canvas.fov, params, mask)
        next_seed, next_id = 0, 1
    seg = canvas.seg
    fills = 0
    last_save = time.monotonic()
    t0 = time.monotonic()

    def result(finished: bool, wasted: int = 0) -> SegmentResult:
        return SegmentResult(output_segmentation(seg), finished, next_id - 1, next_seed, canvas.evaluations,
                             len(seeds), fills, wasted, dict(canvas.origins))

    def save(seed: int, ident: int) -> None:
        save_state(state_path, seg, seeds, seed, ident, fp, canvas.origins)

    def progress(seed: int, ident: int) -> None:
        nonlocal last_save
        if state_path is not None and time.monotonic() - last_save >= params.checkpoint_minutes * 60:
            save(seed, ident)
            last_save = time.monotonic()
            log(f"hpcffn infer: seed {seed}/{len(seeds)}, {ident - 1} segments, "
                f"{canvas.evaluations / max(time.monotonic() - t0, 1e-9):.1f} FOV/s; state saved")

    if params.parallel_fills > 1 and params.movement_policy == "face_max":
        from hpcffn.ffn.parallel_fills import ParallelFills

        runner = ParallelFills(canvas, seeds, params.parallel_fills)
        next_seed, next_id, finished = runner.run(next_seed, next_id, stop, progress)
        fills = runner.fills
        if not finished and state_path is not None:
            save(next_seed, next_id)
        return result(finished, runner.wasted)

    while next_seed < len(seeds):
        if stop:
            if state_path is not None:
                save(next_seed, next_id)
            return result(False)
        pos = tuple(int(v) for v in seeds[next_seed])
        next_seed += 1
        if not canvas.seed_starts_fill(pos):
            continue
        fills += 1
        steps, began = canvas.evaluations, time.monotonic()
        found, box = canvas.segment_at(pos, stop)
        if found is INTERRUPTED:
            next_seed -= 1  # this seed's fill was abandoned: start it again on resume
            fills -= 1
            continue  # the loop's stop check saves the state and returns
        next_id = canvas.commit(pos, box, found, next_id, canvas.evaluations - steps, time.monotonic() - began)
        progress(next_seed, next_id)
    return result(True)
