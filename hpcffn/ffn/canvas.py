"""The canvas of one sub-volume's flood-filling: FFN's seed logits, segment ids, face-max movement.

Split from inference.py so that the sequential loop (inference.segment_volume, FFN's) and the
speculative parallel one (parallel_fills.py) share one implementation of a fill's rules.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from hpcffn.core.params import InferenceParams, ModelParams
from hpcffn.ffn.model import CANVAS_LOGIT_LIMIT
from hpcffn.io.origins import Origin

# FFN marks seeds that were tried and failed (and seeds next to a segment) with -1 in the
# segmentation; such voxels may still be taken by a later segment. Written output has 0 there.
EXCLUDED = -1


def option_logit(p: float) -> np.float32:
    """A probability option as FFN's canvas holds it: the proto's float32, as a float32 logit."""
    p32 = float(np.float32(p))
    return np.float32(math.log(p32 / (1.0 - p32)))


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
        self.origins: dict[int, Origin] = {}  # segment id -> where and how its fill ran (FFN's origins)
        self.policy = FaceMaxPolicy(self.deltas, self.move_logit)
        self._inputs = np.empty((max(1, params.batch_size, params.parallel_fills),) + self.fov + (2,), np.float32)

    def is_blocked(self, pos) -> bool:
        return self.blocked is not None and bool(self.blocked[pos])

    def fov_fits(self, pos) -> bool:
        return all(r <= p < s - r for p, r, s in zip(pos, self.radius, self.shape))

    def near_segment(self, pos) -> bool:
        """A seed in, or within min_boundary_dist of, an existing segment is skipped."""
        mbd = tuple(reversed(self.params.min_boundary_dist))  # x,y,z -> z,y,x
        sel = tuple(slice(max(0, p - m), p + m + 1) for p, m in zip(pos, mbd))
        return bool((self.seg[sel] > 0).any())

    def seed_starts_fill(self, pos) -> bool:
        """FFN's checks of a seed before its fill: the FOV fits, the voxel is free and unmasked, and
        no segment lies within min_boundary_dist (such a seed is marked EXCLUDED)."""
        if not self.fov_fits(pos) or self.seg[pos] > 0 or self.is_blocked(pos):
            return False
        if self.near_segment(pos):
            self.seg[pos] = EXCLUDED
            return False
        return True

    def commit(self, start, box, mask: np.ndarray | None, next_id: int, steps: int, seconds: float) -> int:
        """FFN's end of a fill: a rejected one (`mask` None) marks its seed EXCLUDED, an accepted one
        becomes segment `next_id` over `box` and records its origin. Returns the next free id."""
        if mask is None:
            if self.seg[start] == 0:
                self.seg[start] = EXCLUDED  # a weak seed or too small a segment
            return next_id
        self.seg[box][mask] = next_id
        self.origins[next_id] = Origin(tuple(int(v) for v in start), int(steps), float(seconds))
        return next_id + 1

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

    def _write(self, pos, logits: np.ndarray, seed: np.ndarray | None = None) -> np.ndarray:
        """Write one FOV's logits into the canvas, FFN's disconnection rule first; returns what was written.

        `seed`: the FOV's region of another canvas to write into instead (parallel fills)."""
        old = self.seed[self._fov(pos)] if seed is None else seed
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

    def _accept(self, start, box, seed_box: np.ndarray | None = None) -> np.ndarray | None:
        """FFN's acceptance: a strong seed, and >= min_segment_size voxels >= segment_threshold not yet in a segment.

        `seed_box`: the fill's logits over `box` from a canvas of its own (parallel fills).
        """
        if seed_box is None:
            seed_box = self.seed[box]
        local = tuple(p - s.start for p, s in zip(start, box))
        if seed_box[local] < self.move_logit:
            return None  # weak seed
        mask = seed_box >= self.segment_logit
        mask &= self.seg[box] <= 0
        if self.blocked is not None:
            mask &= ~self.blocked[box]
        if np.count_nonzero(mask) < self.params.min_segment_size:
            return None
        return mask

    # Face-centre fill (movement_policy: face_centre, hpcffn 0.1's) ------------------------------

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
        """face_centre's acceptance: the connected part of the voxels >= segment_threshold that holds the seed."""
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
