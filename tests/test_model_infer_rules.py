"""FFN's inference rules on hand-made probability maps, where the expected moves are known.

No TensorFlow: the "model" is a function of the FOV input (or a script of maps). Rules as in
Google's ffn/inference (movement.py FaceMaxMovementPolicy, inference.py Canvas).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcffn.core.params import InferenceParams, ModelParams
from hpcffn.ffn.canvas import EXCLUDED, Canvas, FaceMaxPolicy, option_logit
from hpcffn.ffn.inference import segment_volume

MP = ModelParams(depth=2, fov_size=(9, 9, 9), deltas=(2, 2, 2), image_mean=0.0, image_stddev=1.0)
THR = option_logit(0.9)


class Recording(Canvas):
    """A canvas that records the FOV centres it evaluates."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.visited = []

    def _evaluate(self, batch):
        self.visited += batch
        return super()._evaluate(batch)


class Script:
    """A 'model' returning the given FOV logit maps in turn (then the last one again)."""

    def __init__(self, *maps):
        self.maps = [np.asarray(m, np.float32) for m in maps]
        self.calls = 0

    def __call__(self, batch):
        m = self.maps[min(self.calls, len(self.maps) - 1)]
        self.calls += 1
        return np.broadcast_to(m[None, ..., None], batch.shape[:-1] + (1,)).copy()


def image_model(batch):
    """Object (logit 5) where the image is bright, else -5."""
    return np.where(batch[..., :1] > 0, 5.0, -5.0).astype(np.float32)


def test_thresholds_are_float32_logits_of_the_float32_probabilities():
    p = float(np.float32(0.9))
    assert THR == np.float32(math.log(p / (1 - p)))
    assert THR.dtype == np.float32 and abs(float(THR) - math.log(9)) < 1e-6


def test_face_maxima_propose_moves_best_first_without_duplicates():
    policy = FaceMaxPolicy((2, 2, 2), THR)
    logits = np.full((9, 9, 9), -5.0, np.float32)
    c = 4
    logits[c + 1, c - 1, c + 2] = 6.0  # +x face: move (1, -1, 2)
    logits[c - 2, c, c + 1] = 3.0  # -z face: move (-2, 0, 1)
    logits[c, c + 2, c] = 1.0  # +y face: below the move threshold, no move
    logits[c + 2, c + 2, c - 2] = 2.5  # an edge shared by +z, +y and -x: one move, proposed once
    assert policy.moves(logits) == [(np.float32(6.0), (1, -1, 2)), (np.float32(3.0), (-2, 0, 1)),
                                    (np.float32(2.5), (2, 2, -2))]
    # ties: the first maximum in C order of the face
    tie = np.full((9, 9, 9), -5.0, np.float32)
    tie[c - 2, c - 1, c + 1] = tie[c - 2, c + 1, c - 1] = 4.0
    assert policy.moves(tie) == [(np.float32(4.0), (-2, -1, 1))]
    # voxels outside the ±deltas cube are not looked at
    far = np.full((9, 9, 9), -5.0, np.float32)
    far[c + 3, c, c] = 9.0
    assert policy.moves(far) == []


def test_lattice_cells_are_centred_on_the_start():
    policy = FaceMaxPolicy((2, 2, 2), THR)
    policy.reset((10, 10, 10))
    assert policy.cell((10, 10, 10)) == policy.cell((9, 10, 10)) == (0, 0, 0)
    assert policy.cell((11, 10, 10)) == policy.cell((12, 10, 10)) == (1, 0, 0)
    assert policy.cell((8, 10, 10)) == (-1, 0, 0)
    policy.done.add((1, 0, 0))
    policy.queue.extend([(5.0, (12, 10, 10)), (5.0, (10, 10, 12))])
    assert policy.next(lambda pos: True) == (10, 10, 12)  # (12,10,10) is in a visited cell
    assert policy.next(lambda pos: True) is None


def test_a_rod_is_followed_in_first_in_first_out_order():
    """A one-voxel rod along x: the x faces propose ±2 moves; the queue is FIFO across FOVs."""
    raw = np.zeros((9, 9, 30), np.float32)
    raw[4, 4, :] = 1.0
    canvas = Recording(raw, image_model, MP, InferenceParams(min_segment_size=1))
    mask, box = canvas.segment_at((4, 4, 10))
    assert [p[2] for p in canvas.visited] == [10, 12, 8, 14, 6, 16, 4, 18, 20, 22, 24]
    seg = np.zeros(raw.shape, bool)
    seg[box] = mask
    # the object voxels of every FOV (centres 4..24, radius 4): x 0..28
    assert seg[4, 4, :29].all() and seg.sum() == 29
    assert np.isnan(canvas.seed).all()  # the canvas is empty again for the next fill


def test_voxels_once_below_one_half_are_never_raised():
    canvas = Canvas(np.zeros((9, 9, 9), np.float32), image_model, MP, InferenceParams())
    canvas.seed[4, 4, 4] = -1.0  # predicted < 0.5 before
    canvas.seed[4, 4, 5] = 1.0  # predicted > 0.5 before
    canvas.seed[4, 4, 6] = -3.0  # before, and the new value is lower still
    new = np.full((9, 9, 9), 3.0, np.float32)
    new[4, 4, 6] = -4.0
    canvas._write((4, 4, 4), new.copy())
    assert canvas.seed[4, 4, 4] == -1.0 and canvas.seed[4, 4, 5] == 3.0 and canvas.seed[4, 4, 6] == -4.0
    assert canvas.seed[0, 0, 0] == 3.0  # NaN (never predicted) takes the new value
    # no voxel of the new FOV reaches the move threshold: the rule does not apply
    canvas.seed[4, 4, 4] = -1.0
    canvas._write((4, 4, 4), np.full((9, 9, 9), 2.0, np.float32))
    assert canvas.seed[4, 4, 4] == 2.0
    # a negative disco_seed_threshold turns the rule off
    off = Canvas(np.zeros((9, 9, 9), np.float32), image_model, MP, InferenceParams(disco_seed_threshold=-1))
    off.seed[4, 4, 4] = -1.0
    off._write((4, 4, 4), new.copy())
    assert off.seed[4, 4, 4] == 3.0


def test_a_weak_seed_stops_the_fill_and_is_marked():
    up = np.full((9, 9, 9), -5.0, np.float32)
    up[:, 4, 4] = 5.0  # a rod along z: moves to z±2
    down = up.copy()
    down[2, 4, 4] = -5.0  # the FOV at z+2 predicts the seed voxel (its z-2) as background
    model = Script(up, down, up)
    canvas = Recording(np.zeros((20, 9, 9), np.float32), model, MP, InferenceParams(min_segment_size=1))
    mask, _ = canvas.segment_at((8, 4, 4))
    assert mask is None  # a weak seed is no segment
    # the fill stopped before the third FOV: the seed was below the move threshold
    assert canvas.visited == [(8, 4, 4), (10, 4, 4)]


def test_no_connected_component_step_and_excluded_voxels_can_be_taken():
    two = np.full((9, 9, 9), -5.0, np.float32)
    two[3:6, 3:6, 3:6] = 5.0  # around the seed
    two[0, 0, 0] = 1.0  # a voxel not connected to it, above segment_threshold (0.6)
    canvas = Canvas(np.zeros((9, 9, 9), np.float32), Script(two), MP, InferenceParams(min_segment_size=28))
    canvas.seg[4, 4, 3] = EXCLUDED  # an earlier failed seed may be taken
    mask, _box = canvas.segment_at((4, 4, 4))  # the box starts at 0: mask indices are the canvas's
    assert mask is not None and mask.sum() == 28 and mask[0, 0, 0] and mask[4, 4, 3]
    too_small = Canvas(np.zeros((9, 9, 9), np.float32), Script(two), MP, InferenceParams(min_segment_size=29))
    assert too_small.segment_at((4, 4, 4))[0] is None


def test_seeds_in_raster_order_and_failed_seeds_marked(tmp_path, monkeypatch):
    """Two bright bars; seeds tried in order, with FFN's -1 markers for seeds that failed."""
    from hpcffn.ffn import inference

    raw = np.zeros((17, 17, 40), np.float32)
    raw[6:11, 6:11, 5:17] = 1.0
    raw[6:11, 6:11, 23:35] = 1.0
    assert [tuple(p) for p in inference.peak_seeds(raw, (9, 9, 9), InferenceParams())] == [
        (8, 8, 9), (8, 8, 28), (8, 8, 32)]
    seeds = [(2, 2, 2),  # the FOV does not fit: skipped
             (8, 8, 9),  # segment 1
             (8, 8, 12),  # inside segment 1: skipped
             (8, 8, 17),  # next to segment 1 (min_boundary_dist 1): marked
             (8, 8, 20),  # background: the first FOV makes the seed weak; marked
             (8, 8, 28)]  # segment 2
    monkeypatch.setattr(inference, "peak_seeds", lambda *a: np.array(seeds))
    state = tmp_path / "s.h5"
    res = segment_volume(raw, image_model, MP, InferenceParams(min_segment_size=20, checkpoint_minutes=1e-9),
                         state_path=state, fp="x", log=lambda s: None)
    seg = res.segmentation
    assert res.segments == 2 and res.fills == 3 and res.seeds == 6 and seg.dtype == np.uint64
    assert (seg[6:11, 6:11, 5:17] == 1).all() and (seg[6:11, 6:11, 23:35] == 2).all()
    saved = inference.load_state(state, "x", raw.shape)[0]  # saved after the last fill
    assert saved[8, 8, 17] == EXCLUDED and saved[8, 8, 20] == EXCLUDED and saved.min() == EXCLUDED
    assert (saved < 0).sum() == 2 and seg[8, 8, 17] == 0


@pytest.mark.parametrize("policy", ["face_max", "face_centre"])
def test_fov_centres_avoid_masked_voxels_and_segments_skip_them(policy):
    raw = np.zeros((9, 9, 30), np.float32)
    raw[4, 4, :] = 1.0
    blocked = np.zeros(raw.shape, bool)
    blocked[4, 4, 16] = True
    canvas = Recording(raw, image_model, MP, InferenceParams(min_segment_size=1, movement_policy=policy))
    canvas.blocked = blocked
    mask, box = canvas.segment_at((4, 4, 10))
    seg = np.zeros(raw.shape, bool)
    seg[box] = mask
    assert not seg[4, 4, 16]
    if policy == "face_max":
        assert (4, 4, 16) not in canvas.visited
