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
`movement_policy: face_centre` and `seed_policy: peaks_shuffled` keep hpcffn 0.1's rules.
Progress (segmentation with FFN's -1 markers, seed list, next seed, next id) is saved between
fills, so a requeued job continues exactly where the last one stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.ffn.model import CANVAS_LOGIT_LIMIT
from hpcffn.core.params import InferenceParams, ModelParams

STATE_FORMAT = 2
# FFN marks seeds that were tried and failed (and seeds next to a segment) with -1 in the
# segmentation; such voxels may still be taken by a later segment. Written output has 0 there.
EXCLUDED = -1
# The noise that breaks ties between equal distances in PolicyPeaks: NumPy's legacy generator
# seeded with 42, uniform [0, 1) times 1e-4, in float64, as FFN adds it.
PEAK_NOISE_SEED = 42
PEAK_NOISE_SCALE = 1e-4


def _cpus() -> int:
    """CPUs this process may use (SLURM's cgroup/affinity), for the multi-threaded distance transform."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def option_logit(p: float) -> np.float32:
    """A probability option as FFN's canvas holds it: the proto's float32, as a float32 logit."""
    p32 = float(np.float32(p))
    return np.float32(math.log(p32 / (1.0 - p32)))


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
    """hpcffn 0.1's seeds (`seed_policy: peaks_shuffled`): maxima at least 0.5 voxel from an edge
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
    return policy_peaks(image, params, blocked)


# Movement --------------------------------------------------------------------------------------


class FaceMaxPolicy:
    """FFN's FaceMaxMovementPolicy: candidate moves from the maxima of the ±deltas cube's faces.

    After a FOV at `pos`, for each axis with a non-zero delta and each sign, the face of the
    (2·delta+1)^3 cube around the FOV centre at that offset is searched for its maximum (the
    first in C order); a face whose maximum reaches the threshold proposes a move to that voxel.
    A FOV's distinct proposals are queued best-first; the queue is first-in first-out across
    FOVs. Popping skips positions whose lattice cell (deltas around the start) was visited and
    positions the canvas says are invalid.
    """

    def __init__(self, deltas_zyx, threshold: np.float32):
        self.deltas = tuple(int(d) for d in deltas_zyx)
        self.threshold = threshold
        self.reset((0, 0, 0))

    def reset(self, start) -> None:
        self.queue: deque = deque()
        self.done: set = set()
        self.start = tuple(start)

    def cell(self, pos) -> tuple:
        return tuple((p - s + d // 2) // max(d, 1) for p, s, d in zip(pos, self.start, self.deltas))

    def moves(self, logits: np.ndarray) -> list:
        """(score, z,y,x offset) proposals of one FOV's logits, best first."""
        c = [n // 2 for n in logits.shape]
        cube = logits[tuple(slice(ci - d, ci + d + 1) for ci, d in zip(c, self.deltas))]
        found = []
        for axis, d in enumerate(self.deltas):
            if d == 0:
                continue
            for off in (-d, d):
                face = np.take(cube, d + off, axis=axis)
                k = int(face.argmax())
                score = face.flat[k]
                if score < self.threshold:
                    continue
                rel = [int(i) - n // 2 for i, n in zip(np.unravel_index(k, face.shape), face.shape)]
                rel.insert(axis, off)
                item = (score, tuple(rel))
                if item not in found:
                    found.append(item)
        return sorted(found, reverse=True)

    def update(self, logits: np.ndarray, pos) -> None:
        self.done.add(self.cell(pos))
        for score, rel in self.moves(logits):
            self.queue.append((score, tuple(p + r for p, r in zip(pos, rel))))

    def next(self, valid):
        """The next queued position that is in an unvisited cell and `valid`, else None."""
        while self.queue:
            _, pos = self.queue.popleft()
            if self.cell(pos) not in self.done and valid(pos):
                return pos
        return None


# segment_at's answer when a stop request abandoned the fill.
INTERRUPTED = np.zeros(0, bool)


@dataclass
class SegmentResult:
    segmentation: np.ndarray  # uint64, 0 unsegmented
    finished: bool
    segments: int
    seeds_tried: int
    fov_evaluations: int
    seeds: int = 0  # seeds the policy found
    fills: int = 0  # fills started (this run)


class Canvas:
    """The state of one sub-volume's segmentation and the logits of the object being filled."""

    def __init__(self, image: np.ndarray, predict, model_params: ModelParams, params: InferenceParams):
        from hpcffn.ffn.model import deltas_zyx, fov_zyx, normalize_image

        self.image = normalize_image(image, model_params)
        self.shape = self.image.shape
        self.fov = fov_zyx(model_params)
        self.radius = tuple(f // 2 for f in self.fov)
        self.deltas = deltas_zyx(model_params)
        self.params = params
        self.predict = predict
        self.seed = np.full(self.shape, np.nan, np.float32)  # logits of the object being filled
        self.seg = np.zeros(self.shape, np.int32)  # 0 free, EXCLUDED, >0 segment ids
        self.blocked: np.ndarray | None = None  # masked voxels: never seeded, never segmented
        self.move_logit = option_logit(params.move_threshold)
        self.segment_logit = option_logit(params.segment_threshold)
        self.init_logit = option_logit(params.init_activation)
        self.pad_logit = option_logit(params.pad_value)
        self.evaluations = 0
        self.policy = FaceMaxPolicy(self.deltas, self.move_logit)
        self._inputs = np.empty((max(1, params.batch_size),) + self.fov + (2,), np.float32)

    def is_blocked(self, pos) -> bool:
        return self.blocked is not None and bool(self.blocked[pos])

    def fov_fits(self, pos) -> bool:
        return all(r <= p < s - r for p, r, s in zip(pos, self.radius, self.shape))

    def near_segment(self, pos) -> bool:
        """A seed in, or within min_boundary_dist of, an existing segment is skipped."""
        mbd = tuple(reversed(self.params.min_boundary_dist))  # x,y,z -> z,y,x
        sel = tuple(slice(max(0, p - m), p + m + 1) for p, m in zip(pos, mbd))
        return bool((self.seg[sel] > 0).any())

    def valid_move(self, pos) -> bool:
        """FFN's is_valid_pos: seed at pos not below the move threshold, FOV fits, not segmented."""
        return not self.seed[pos] < self.move_logit and self.fov_fits(pos) and self.seg[pos] <= 0

    def _fov(self, pos):
        return tuple(slice(p - r, p + r + 1) for p, r in zip(pos, self.radius))

    def _evaluate(self, batch: list) -> np.ndarray:
        """The model's logits for FOVs at `batch` (the canvas's NaN read as pad_value)."""
        x = self._inputs[: len(batch)]
        for i, pos in enumerate(batch):
            sl = self._fov(pos)
            x[i, ..., 0] = self.image[sl]
            np.copyto(x[i, ..., 1], self.seed[sl])
        np.copyto(x[..., 1], self.pad_logit, where=np.isnan(x[..., 1]))
        self.evaluations += len(batch)
        return self.predict(x)[..., 0]

    def _write(self, pos, logits: np.ndarray) -> np.ndarray:
        """Write one FOV's logits into the canvas, FFN's disconnection rule first; returns what was written."""
        sl = self._fov(pos)
        old = self.seed[sl]
        disco = float(np.float32(self.params.disco_seed_threshold))
        if disco >= 0 and np.count_nonzero(logits >= self.move_logit) / logits.size > disco:
            # A voxel predicted below 0.5 is never raised again (NaN, never predicted, is not kept).
            keep = (old < 0) & (logits > old)
            logits = np.where(keep, old, logits)
        old[...] = logits
        return old

    def segment_at(self, start, stop=None) -> tuple[np.ndarray | None, tuple]:
        """Flood-fill from `start`; returns the accepted mask (in the bounding box) or None, and the box.

        A `stop` that turns true mid-fill (a signal before the time limit) abandons this fill:
        the canvas is reset and INTERRUPTED is returned, so the seed is tried again on resume
        instead of the job running into SIGKILL inside one long fill.
        """
        start = tuple(int(v) for v in start)
        self.seed[start] = self.init_logit
        fill = self._fill_face_centre if self.params.movement_policy == "face_centre" else self._fill_face_max
        lo, hi, done = fill(start, stop)
        box = tuple(slice(max(0, a - r), b + r + 1) for a, b, r in zip(lo, hi, self.radius))
        if not done:
            self.seed[box] = np.nan
            return INTERRUPTED, ()
        if self.params.movement_policy == "face_centre":
            mask = self._accept_connected(start, box)
        else:
            mask = self._accept(start, box)
        self.seed[box] = np.nan  # the next fill starts from an empty canvas
        return mask, box

    def _fill_face_max(self, start, stop) -> tuple[list, list, bool]:
        """FFN's segment_at loop; returns the lowest and highest FOV centres and whether it finished."""
        policy = self.policy
        policy.reset(start)
        policy.queue.append((None, start))
        lo, hi = list(start), list(start)
        while (pos := policy.next(self.valid_move)) is not None:
            if self.seed[start] < self.move_logit:
                break  # the seed got too weak
            if self.is_blocked(pos):
                continue
            if stop:
                return lo, hi, False
            logits = self._write(pos, self._evaluate([pos])[0])
            lo = [min(a, p) for a, p in zip(lo, pos)]
            hi = [max(b, p) for b, p in zip(hi, pos)]
            policy.update(logits, pos)
        return lo, hi, True

    def _accept(self, start, box) -> np.ndarray | None:
        """FFN's acceptance: a strong seed, and >= min_segment_size voxels >= segment_threshold not yet in a segment."""
        if self.seed[start] < self.move_logit:
            return None  # weak seed
        mask = self.seed[box] >= self.segment_logit
        mask &= self.seg[box] <= 0
        if self.blocked is not None:
            mask &= ~self.blocked[box]
        if np.count_nonzero(mask) < self.params.min_segment_size:
            return None
        return mask

    # hpcffn 0.1's fill (movement_policy: face_centre) ------------------------------------------

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

    def _fill_face_centre(self, start, stop) -> tuple[list, list, bool]:
        """Moves to the centre of each face whose probability reaches move_threshold, each
        position once; non-overlapping FOVs are batched; logits clipped to ±logit(0.999)."""
        faces = []
        for axis in range(3):
            if self.deltas[axis]:
                for sign in (-1, 1):
                    off = [0, 0, 0]
                    off[axis] = sign * self.deltas[axis]
                    faces.append(tuple(off))
        lo, hi = list(start), list(start)
        queue: deque = deque([start])
        queued = {start}
        while queue:
            if stop:
                return lo, hi, False
            batch = self._pick_batch(queue, self.params.batch_size)
            out = self._evaluate(batch)
            for i, pos in enumerate(batch):
                self.seed[self._fov(pos)] = np.clip(out[i], -CANVAS_LOGIT_LIMIT, CANVAS_LOGIT_LIMIT)
                lo = [min(a, p) for a, p in zip(lo, pos)]
                hi = [max(b, p) for b, p in zip(hi, pos)]
                moves = []
                for off in faces:
                    target = tuple(p + o for p, o in zip(pos, off))
                    if target in queued or not self.fov_fits(target):
                        continue
                    score = self.seed[target]
                    if score >= self.move_logit:
                        moves.append((score, target))
                for _, target in sorted(moves, reverse=True):
                    queued.add(target)
                    queue.append(target)
        return lo, hi, True

    def _accept_connected(self, start, box) -> np.ndarray | None:
        """hpcffn 0.1's acceptance: the connected part of the voxels >= segment_threshold that holds the seed."""
        from scipy import ndimage

        mask = (self.seed[box] >= self.segment_logit) & (self.seg[box] <= 0)
        if self.blocked is not None:
            mask &= ~self.blocked[box]
        local = tuple(p - s.start for p, s in zip(start, box))
        if not mask[local]:
            return None
        comp, _ = ndimage.label(mask)
        mask = comp == comp[local]
        if int(mask.sum()) < self.params.min_segment_size:
            return None
        return mask


def fingerprint(**inputs) -> str:
    """A short hash of what a resumed run must share with the run that saved the state."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(path: Path, seg: np.ndarray, seeds: np.ndarray, next_seed: int, next_id: int, fp: str) -> None:
    """Resumable progress (the segmentation with its -1 markers), written atomically (HDF5)."""

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
                   mask: np.ndarray | None = None) -> SegmentResult:
    """Segment a whole sub-volume (FFN's segment_all); stops early (finished=False) after saving
    state when `stop` is set.

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
        canvas.seg, seeds, next_seed, next_id = resumed
        log(f"hpcffn infer: resumed at seed {next_seed}/{len(seeds)} with {next_id - 1} segments")
    else:
        seeds = peak_seeds(canvas.image, canvas.fov, params, mask)
        next_seed, next_id = 0, 1
    seg = canvas.seg
    fills = 0
    last_save = time.monotonic()
    t0 = time.monotonic()

    def result(finished: bool) -> SegmentResult:
        return SegmentResult(output_segmentation(seg), finished, next_id - 1, next_seed, canvas.evaluations,
                             len(seeds), fills)

    while next_seed < len(seeds):
        if stop:
            if state_path is not None:
                save_state(state_path, seg, seeds, next_seed, next_id, fp)
            return result(False)
        pos = tuple(int(v) for v in seeds[next_seed])
        next_seed += 1
        if not canvas.fov_fits(pos) or seg[pos] > 0 or canvas.is_blocked(pos):
            continue
        if canvas.near_segment(pos):
            seg[pos] = EXCLUDED
            continue
        fills += 1
        found, box = canvas.segment_at(pos, stop)
        if found is INTERRUPTED:
            next_seed -= 1  # this seed's fill was abandoned: start it again on resume
            fills -= 1
            continue  # the loop's stop check saves the state and returns
        if found is None:
            if seg[pos] == 0:
                seg[pos] = EXCLUDED  # a weak seed or too small a segment
        else:
            seg[box][found] = next_id
            next_id += 1
        if state_path is not None and time.monotonic() - last_save >= params.checkpoint_minutes * 60:
            save_state(state_path, seg, seeds, next_seed, next_id, fp)
            last_save = time.monotonic()
            log(f"hpcffn infer: seed {next_seed}/{len(seeds)}, {next_id - 1} segments, "
                f"{canvas.evaluations / max(time.monotonic() - t0, 1e-9):.1f} FOV/s; state saved")
    return result(True)
