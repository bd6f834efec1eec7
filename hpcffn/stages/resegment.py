"""Joins decided by FFN itself: one flood fill where two neighbouring tiles' segments meet.

The overlap's voxel counts alone cannot tell a body that one tile split into pieces (join every
piece) from a tile's merge of two bodies (join only the right one): each `fraction_of` rule misses
the stitching target somewhere on FIB-25 (docs/real_data.md). FFN's own way to ask whether two
segments are one object is to run the network again where they meet (google/ffn's
resegmentation): a fill seeded at the point deepest inside their shared voxels, in a box of
+-resegment_radius voxels, covers most of both segments there when they are one object and stops
at the membrane when one of them also holds another body.

Only the uncertain pairs cost a fill, so the joins tasks stay cheap: pairs that agree on nearly
all their shared voxels (MUTUAL of the larger's) join at once, pairs sharing less than CANDIDATE
of the smaller's are never joined, and where FFN does not accept the fill (a weak seed, a fill
below min_segment_size) the `fraction_of` rule decides as it would without resegmentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hpcffn.core.params import InferenceParams, ModelParams, StitchParams
from hpcffn.core.plan_model import Plan
from hpcffn.io.volumes import Location, open_dataset

# Pairs whose shared voxels are at least this share of each segment's there: one object, no fill.
MUTUAL = 0.9
# Pairs whose shared voxels are under this share of the smaller segment's there: never joined.
# (On ts2_dev every pair groundtruth joins shares more; docs/real_data.md.)
CANDIDATE = 0.3


@dataclass
class Judge:
    """Decides a pair of neighbouring tiles' segments by one fill in the volume's image."""

    raw: Location
    shape: tuple[int, int, int]
    # The model call for a pair, by the name of its earlier tile (the one whose joins task judges
    # it): that tile's checkpoint, as it segmented it. Groups may train checkpoints of their own.
    predict_for: Callable[[str], object]
    model: ModelParams
    inference: InferenceParams
    params: StitchParams
    counts: dict = field(default_factory=lambda: {"at_once": 0, "filled": 0, "joined": 0, "not_accepted": 0,
                                                   "fovs": 0})

    @classmethod
    def from_plan(cls, plan: Plan, volume_name: str, params: StitchParams, log=print) -> Judge:
        """The judge of a plan's volume: its image, and the checkpoints its tiles were segmented
        with, each loaded at its first fill (a task with no uncertain pair never loads one)."""
        from hpcffn.stages.infer import load_predict, plan_checkpoint

        loaded: dict[str, object] = {}

        def predict_for(name: str):
            checkpoint = str(plan_checkpoint(plan, plan.tile(name)))
            if checkpoint not in loaded:
                loaded[checkpoint], prefix, _ = load_predict(checkpoint, plan.ffn.model, plan.ffn.inference,
                                                             plan.ffn.training.xla, log)
                log(f"hpcffn joins: resegment: uncertain joins decided by fills with {prefix}")
            return loaded[checkpoint]

        volume = plan.volume(volume_name)
        return cls(volume.raw, tuple(volume.shape), predict_for, plan.ffn.model, plan.ffn.inference, params)

    def decide(self, t, u, box, a: np.ndarray, b: np.ndarray, found, by_rule: np.ndarray) -> np.ndarray:
        """(k, 2) pairs (t id, u id) to join, from the shared region a (t's) / b (u's) at `box`,
        its pair counts `found` (io/labeling.pair_counts_where_both) and the rule's pairs."""
        if found is None:
            return by_rule
        fallback = {tuple(p) for p in by_rule.tolist()}
        keep = []
        for ia, ib, common, size_a, size_b in zip(*(v.tolist() for v in found)):
            if common < self.params.min_overlap_voxels or common < CANDIDATE * min(size_a, size_b):
                continue
            if common >= MUTUAL * max(size_a, size_b):
                self.counts["at_once"] += 1
                keep.append((ia, ib))
                continue
            cover = self.coverage(t, u, box, a == ia, b == ib, ia, ib)
            if cover is None:
                self.counts["not_accepted"] += 1
                joined = (ia, ib) in fallback
            else:
                self.counts["filled"] += 1
                joined = cover >= self.params.resegment_coverage
            if joined:
                self.counts["joined"] += 1
                keep.append((ia, ib))
        return np.array(keep, np.uint64).reshape(-1, 2)

    def coverage(self, t, u, box, in_a: np.ndarray, in_b: np.ndarray, ia: int, ib: int) -> float | None:
        """The smaller share of the two segments (in the fill's box) one fill covers; None: FFN
        did not accept the fill (or no point of the shared voxels lets a FOV fit in the volume)."""
        from scipy import ndimage

        from hpcffn.ffn.canvas import Canvas
        from hpcffn.ffn.model import fov_zyx

        radius = [f // 2 for f in fov_zyx(self.model)]
        shared = in_a & in_b
        start, size = box
        fits = tuple(slice(max(0, r - s), max(0, min(n, m - r - s))) for s, n, m, r in zip(start, size, self.shape, radius))
        inside = np.zeros_like(shared)
        inside[fits] = shared[fits]
        if not inside.any():
            return None
        depth = ndimage.distance_transform_edt(inside)
        point = [int(v) + s for v, s in zip(np.unravel_index(np.argmax(depth), depth.shape), start)]
        r = self.params.resegment_radius
        lo = [max(0, c - r) for c in point]
        hi = [min(n, c + r + 1) for c, n in zip(point, self.shape)]
        with open_dataset(self.raw, "raw") as raw:
            image = raw[tuple(slice(s, e) for s, e in zip(lo, hi))]
        canvas = Canvas(image, self.predict_for(t.name), self.model, self.inference)
        mask, where = canvas.segment_at(tuple(c - s for c, s in zip(point, lo)))
        self.counts["fovs"] += canvas.evaluations
        if mask is None:
            return None
        filled = np.zeros(image.shape, bool)
        filled[where] = mask
        shares = []
        for tile, ident in ((t, ia), (u, ib)):
            segment = segment_in(tile, ident, lo, hi)
            shares.append(np.count_nonzero(filled & segment) / max(1, np.count_nonzero(segment)))
        return float(min(shares))

    def summary(self) -> str:
        c = self.counts
        return (f"{c['at_once']} pairs joined at once, {c['filled']} judged by a fill ({c['fovs']} FOVs), "
                f"{c['not_accepted']} fills not accepted (fraction_of decided), {c['joined']} of those joined")


def segment_in(tile, ident: int, lo, hi) -> np.ndarray:
    """Where a tile's (stitch.TileSegmentation) segment `ident` lies in the volume box lo..hi
    (False outside the tile)."""
    out = np.zeros([h - s for s, h in zip(lo, hi)], bool)
    a = [max(v, s) for v, s in zip(lo, tile.start)]
    b = [min(v, s) for v, s in zip(hi, tile.stop)]
    if all(e > s for s, e in zip(a, b)):
        with open_dataset(tile.location) as ds:
            part = ds[tuple(slice(s - o, e - o) for s, e, o in zip(a, b, tile.start))]
        out[tuple(slice(s - o, e - o) for s, e, o in zip(a, b, lo))] = part == ident
    return out


def judge_of(plan: Plan, params: StitchParams, volume_name: str, log=print) -> Judge | None:
    """The fill judge of a volume's uncertain joins when params.resegment, else None."""
    return Judge.from_plan(plan, volume_name, params, log) if params.resegment else None
