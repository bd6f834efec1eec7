"""Several seeds' fills side by side, with exactly FFN's one-fill-at-a-time segmentation.

FFN fills one seed at a time, one FOV per model call: every FOV reads the logits the one before
wrote. That leaves a GPU mostly idle. Here, beside the first unfinished seed's fill (the head),
fills of later seeds run speculatively, one FOV each in the same model call, and are kept only
if they saw exactly what FFN's loop would have shown them:

- canvas: FFN clears the canvas before every fill, so a fill never sees another's logits; here
  every fill has a canvas of its own (NaN where it predicted nothing, over a box that grows
  with the fill), so fills never disturb each other there;
- segments: a fill depends on earlier seeds only through `seg` (a move into a segmented voxel
  is refused). The positions whose move check passed are kept; when an earlier seed's segment
  is committed over one of them, the fill is thrown away and started again;
- fills are committed strictly in seed order with FFN's rules (seed in or next to a segment,
  weak seed, min_segment_size), the seed checks done at commit time, so the seeds, ids and -1
  markers are FFN's.

The price: the FOVs of thrown-away fills (reported as wasted) and one float32 box per live fill.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from hpcffn.ffn.canvas import Canvas, FaceMaxPolicy


class _OwnCanvas:
    """One fill's seed logits over a box of the volume that grows as the fill moves."""

    def __init__(self, shape, centre, radius):
        self.shape = tuple(shape)
        self.lo = [max(0, c - 2 * r) for c, r in zip(centre, radius)]
        hi = [min(s, c + 2 * r + 1) for c, r, s in zip(centre, radius, shape)]
        self.a = np.full([h - lo for h, lo in zip(hi, self.lo)], np.nan, np.float32)

    def view(self, sl: tuple) -> np.ndarray:
        """The writable part under volume slices `sl`, growing the box when they reach outside it."""
        hi = [lo + n for lo, n in zip(self.lo, self.a.shape)]
        if any(s.start < lo or s.stop > h for s, lo, h in zip(sl, self.lo, hi)):
            # grow with a margin of half the new extent, so a long fill reallocates rarely
            lo2 = [min(lo, s.start) for s, lo in zip(sl, self.lo)]
            hi2 = [max(h, s.stop) for s, h in zip(sl, hi)]
            pad = [(b - a) // 2 for a, b in zip(lo2, hi2)]
            lo2 = [max(0, a - p) if a < lo else a for a, p, lo in zip(lo2, pad, self.lo)]
            hi2 = [min(n, b + p) if b > h else b for b, p, h, n in zip(hi2, pad, hi, self.shape)]
            a = np.full([b - a for a, b in zip(lo2, hi2)], np.nan, np.float32)
            a[tuple(slice(o - n, o - n + m) for o, n, m in zip(self.lo, lo2, self.a.shape))] = self.a
            self.a, self.lo = a, lo2
        return self.a[tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, self.lo))]

    def value(self, pos) -> np.float32:
        return self.a[tuple(p - o for p, o in zip(pos, self.lo))]


@dataclass(eq=False)
class _Fill:
    """One live fill: its seed (index and position), canvas, movement queue and extent."""

    k: int
    start: tuple
    canvas: _OwnCanvas
    policy: FaceMaxPolicy
    lo: list
    hi: list
    checked: list = field(default_factory=list)  # positions whose move check read seg <= 0
    evaluations: int = 0
    finished: bool = False
    began: float = field(default_factory=time.monotonic)  # the fill's origin records its wall time from here


class ParallelFills:
    """FFN's segment_all loop with up to `width` fills evaluated per model call."""

    def __init__(self, canvas: Canvas, seeds: np.ndarray, width: int):
        self.c = canvas
        self.seeds = seeds
        self.width = max(1, int(width))
        # Finished fills wait for their turn to commit without a model call, holding their canvas.
        self.max_live = 4 * self.width
        self.lookahead = 16 * self.width + 64  # seeds scanned past the head for new fills
        self.live: dict[int, _Fill] = {}  # seed index -> fill
        self.wasted = 0
        self.fills = 0  # fills FFN's loop would have started

    def _box(self, f: _Fill) -> tuple:
        return tuple(slice(max(0, a - r), b + r + 1) for a, b, r in zip(f.lo, f.hi, self.c.radius))

    def _launch(self, k: int) -> None:
        pos = tuple(int(v) for v in self.seeds[k])
        policy = FaceMaxPolicy(self.c.deltas, self.c.move_logit)
        policy.reset(pos)
        policy.queue.append((None, pos))
        f = _Fill(k, pos, _OwnCanvas(self.c.shape, pos, self.c.radius), policy, list(pos), list(pos))
        f.canvas.view(tuple(slice(p, p + 1) for p in pos))[...] = self.c.init_logit
        self.live[k] = f

    def _abandon(self, f: _Fill) -> None:
        self.wasted += f.evaluations
        del self.live[f.k]

    def _next_fov(self, f: _Fill):
        """The fill's next FOV centre as FFN's segment_at picks it, or None when the fill is done."""
        c, own = self.c, f.canvas

        def valid(pos) -> bool:
            if own.value(pos) < c.move_logit or not c.fov_fits(pos) or c.seg[pos] > 0:
                return False
            f.checked.append(pos)
            return True

        while (pos := f.policy.next(valid)) is not None:
            if own.value(f.start) < c.move_logit:
                return None  # the seed got too weak
            if not c.is_blocked(pos):
                return pos
        return None

    def _round(self) -> None:
        """One model call: the next FOV of every running fill."""
        c = self.c
        batch = []
        earlier: list[_Fill] = []
        for f in sorted(self.live.values(), key=lambda g: g.k):
            if not f.finished:
                pos = self._next_fov(f)
                if pos is None:
                    f.finished = True
                elif any(self._reaches(pos, g) for g in earlier):
                    f.policy.queue.appendleft((None, pos))  # wait until that fill's segment is known
                else:
                    batch.append((f, pos, f.canvas.view(c._fov(pos))))
            earlier.append(f)
        if not batch:
            return
        x = c._inputs[: len(batch)]
        for i, (_, pos, seed) in enumerate(batch):
            x[i, ..., 0] = c.image[c._fov(pos)]
            np.copyto(x[i, ..., 1], seed)
        np.copyto(x[..., 1], c.pad_logit, where=np.isnan(x[..., 1]))
        c.evaluations += len(batch)
        out = c.predict(x)[..., 0]
        for (f, pos, seed), logits in zip(batch, out):
            written = c._write(pos, logits, seed)
            f.lo = [min(a, p) for a, p in zip(f.lo, pos)]
            f.hi = [max(b, p) for b, p in zip(f.hi, pos)]
            f.evaluations += 1
            f.policy.update(written, pos)

    def _reaches(self, pos, g: _Fill) -> bool:
        """Whether a FOV at `pos` comes within a FOV of fill `g`'s box. An earlier fill's segment
        may take voxels there, which would make this fill's moves void; waiting for that segment
        costs no FOVs, running on would likely be wasted."""
        return all(a - 2 * r <= p <= b + 2 * r for a, b, p, r in zip(g.lo, g.hi, pos, self.c.radius))

    def _commit(self, f: _Fill, next_id: int) -> int:
        """FFN's end of the head seed's fill; returns the next free segment id."""
        c, pos = self.c, f.start
        if not c.seed_starts_fill(pos):
            # FFN's loop skips this seed (an earlier segment reached it): its fill never happened.
            self._abandon(f)
            return next_id
        self.fills += 1
        del self.live[f.k]
        box = self._box(f)
        mask = c._accept(pos, box, f.canvas.view(box))
        next_id = c.commit(pos, box, mask, next_id, f.evaluations, time.monotonic() - f.began)
        if mask is not None:
            for g in list(self.live.values()):  # later fills that moved through the new segment
                if g.checked and (c.seg[tuple(np.asarray(g.checked).T)] > 0).any():
                    self._abandon(g)
        return next_id

    def _near_live(self, pos) -> bool:
        """Whether `pos` lies in (or within a FOV of) a live fill's box: most likely the same
        object, whose earlier fill would take the seed and make this fill wasted work."""
        return any(self._reaches(pos, f) for f in self.live.values())

    def _speculate(self, head: int) -> None:
        """Start fills for later seeds that FFN's loop may still fill."""
        c = self.c
        running = sum(not f.finished for f in self.live.values())
        k = head + 1
        end = min(len(self.seeds), head + 1 + self.lookahead)
        while running < self.width and len(self.live) < self.max_live and k < end:
            if k not in self.live:
                pos = tuple(int(v) for v in self.seeds[k])
                if (c.fov_fits(pos) and c.seg[pos] <= 0 and not c.is_blocked(pos) and not c.near_segment(pos)
                        and not self._near_live(pos)):
                    self._launch(k)
                    running += 1
            k += 1

    def run(self, next_seed: int, next_id: int, stop=None, on_commit=None) -> tuple[int, int, bool]:
        """Process seeds from `next_seed`; returns (next_seed, next_id, finished).

        `stop` turning true drops the live fills and returns the first seed not yet committed,
        where FFN's loop resumes. `on_commit(next_seed, next_id)` runs after each fill's commit
        (progress saves)."""
        c, seeds, head = self.c, self.seeds, next_seed
        while True:
            while head < len(seeds):
                f = self.live.get(head)
                if f is None:
                    if not c.seed_starts_fill(tuple(int(v) for v in seeds[head])):
                        head += 1
                        continue
                    if len(self.live) >= self.max_live:
                        self._abandon(max(self.live.values(), key=lambda g: g.k))
                    self._launch(head)
                    break
                if not f.finished:
                    break
                next_id = self._commit(f, next_id)
                head += 1
                if on_commit is not None:
                    on_commit(head, next_id)
            if head >= len(seeds):
                return head, next_id, True
            if stop:
                for f in list(self.live.values()):
                    self._abandon(f)
                return head, next_id, False
            self._speculate(head)
            self._round()
