"""Flood-filling inference with an oracle model (no TensorFlow): seeds, moves, acceptance, resume.

The FFN rules themselves (face-maximum moves, lattice, disconnection rule, weak seeds, raster
seed order) are tested with hand-made probability maps in test_model_infer_rules.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import InferenceParams, ModelParams
from hpcffn.ffn import synthetic
from hpcffn.ffn.canvas import Canvas
from hpcffn.ffn.inference import (
    load_state,
    output_segmentation,
    peak_seeds,
    segment_volume,
)

pytest.importorskip("skimage")

MP = ModelParams(depth=2, fov_size=(9, 9, 9), deltas=(2, 2, 2))


class Oracle:
    """A 'model' that predicts the bright region connected to the FOV centre, counting calls.

    (FFN keeps every voxel above segment_threshold, connected or not, so predicting every
    bright voxel in the FOV would merge neighbouring objects; a trained FFN predicts the
    object under the FOV centre, as this oracle does.) Like a trained model it is most
    confident deep inside the object, so the face maxima that FFN moves to lie inside.
    """

    def __init__(self):
        self.calls = 0
        self.batches = []

    def __call__(self, batch):
        from scipy import ndimage

        self.calls += 1
        self.batches.append(len(batch))
        out = np.full(batch.shape[:-1] + (1,), -4.0, np.float32)
        for i, fov in enumerate(batch):
            comp, _ = ndimage.label(fov[..., 0] > 0)
            centre = comp[tuple(n // 2 for n in comp.shape)]
            if centre:
                inside = comp == centre
                out[i, ..., 0][inside] = 3.0 + ndimage.distance_transform_edt(inside)[inside]
        return out


def _scene(seed=2, shape=(40, 40, 40)):
    return synthetic.balls_volume(shape, radius=(4, 7), seed=seed)


def _score(seg, labels):
    from hpcffn.stages.evaluate import compare

    return compare(seg, labels)


def test_peak_seeds_fall_inside_every_object_in_raster_order():
    raw, labels = _scene()
    seeds = peak_seeds(raw, (9, 9, 9), InferenceParams())
    assert len(seeds) > 0
    assert [tuple(p) for p in seeds] == sorted(tuple(p) for p in seeds)
    # FFN's policy lists every maximum (not within min_distance of a face); where the FOV
    # does not fit, segment_volume skips them.
    assert all(all(3 <= p < s - 3 for p, s in zip(pt, raw.shape)) for pt in seeds)
    hit = {int(labels[tuple(p)]) for p in seeds if all(4 <= v < n - 4 for v, n in zip(p, raw.shape))}
    # Every object whose centre region lies where the FOV fits gets at least one seed.
    reachable = {int(v) for v in np.unique(labels[4:-4, 4:-4, 4:-4]) if v}
    assert reachable <= hit


@pytest.mark.parametrize("policy", ["peaks", "peaks_shuffled"])
def test_peak_seeds_without_any_edge_sit_far_from_the_faces(policy):
    """A featureless box has no boundary: distances are measured to its faces, seeds go inside."""
    seeds = peak_seeds(np.full((30, 40, 50), 100, np.uint8), (9, 9, 9), InferenceParams(seed_policy=policy))
    assert len(seeds) >= 1
    assert all(min(p, s - 1 - p) >= 13 for pt in seeds for p, s in zip(pt, (30, 40, 50)))


def test_hpcffn_01_seed_policy_is_kept_as_an_option():
    raw, _labels = _scene()
    params = InferenceParams(seed_policy="peaks_shuffled", seed_threshold=0.5, seed_min_distance=5)
    seeds = peak_seeds(raw, (9, 9, 9), params)
    assert all(all(4 <= p < s - 4 for p, s in zip(pt, raw.shape)) for pt in seeds)
    assert [tuple(p) for p in seeds] != sorted(tuple(p) for p in seeds)  # shuffled
    assert len(seeds) < len(peak_seeds(raw, (9, 9, 9), InferenceParams()))


def test_oracle_segmentation_is_perfect_and_ids_are_unique():
    raw, labels = _scene()
    params = InferenceParams(min_segment_size=50)
    res = segment_volume(raw, Oracle(), MP, params)
    assert res.finished and res.fills >= res.segments
    m = _score(res.segmentation, labels)
    assert m["adapted_rand_error"] < 0.01, m
    assert res.segments == len(np.unique(res.segmentation[res.segmentation > 0]))
    assert not np.any(res.segmentation[labels == 0])


def test_masked_voxels_are_never_seeded_or_segmented():
    raw, labels = _scene()
    ids = [int(i) for i in np.unique(labels) if i]
    masked_object = labels == ids[0]
    mask = masked_object.copy()
    mask[:, :, :3] = True  # and a slab of background
    res = segment_volume(raw, Oracle(), MP, InferenceParams(min_segment_size=50), mask=mask)
    assert not res.segmentation[mask].any()
    rest = (labels > 0) & ~mask
    m = _score(np.where(mask, 0, res.segmentation), np.where(mask, 0, labels))
    assert m["adapted_rand_error"] < 0.01 and res.segmentation[rest].all(), m
    with pytest.raises(HpcffnError, match="mask shape"):
        segment_volume(raw, Oracle(), MP, InferenceParams(), mask=mask[1:])


def test_moves_follow_the_object_beyond_one_fov():
    """A long bright rod needs many FOV moves; it becomes one segment, the dark gap stops the fill."""
    raw = np.full((15, 15, 60), 60, np.uint8)
    raw[5:10, 5:10, 3:30] = 200
    raw[5:10, 5:10, 33:57] = 200  # a second rod after a 3-voxel dark gap
    canvas = Canvas(raw, Oracle(), MP, InferenceParams(min_segment_size=10))
    mask, box = canvas.segment_at((7, 7, 10))
    seg = np.zeros(raw.shape, bool)
    seg[box] = mask
    assert seg[7, 7, 3:30].all() and not seg[:, :, 30:].any()
    assert canvas.evaluations > 5


def test_min_segment_size_and_boundary_distance():
    raw, labels = _scene()
    sizes = np.bincount(labels.ravel().astype(np.int64))[1:]
    limit = int(np.median(sizes)) + 1
    res = segment_volume(raw, Oracle(), MP, InferenceParams(min_segment_size=limit))
    kept = [np.count_nonzero(res.segmentation == i) for i in range(1, res.segments + 1)]
    assert kept and min(kept) >= limit
    assert res.segments < len(sizes)
    # A seed next to an existing segment is skipped.
    canvas = Canvas(raw, Oracle(), MP, InferenceParams(min_boundary_dist=(2, 2, 2)))
    canvas.seg[10, 10, 10] = 1
    assert canvas.near_segment((10, 10, 12)) and not canvas.near_segment((10, 10, 13))


def test_hpcffn_01_fill_batches_fovs_and_gives_the_same_segmentation():
    raw, labels = _scene(seed=4)
    one, many = Oracle(), Oracle()
    old = {"movement_policy": "face_centre", "min_segment_size": 50}
    a = segment_volume(raw, one, MP, InferenceParams(**old, batch_size=1))
    b = segment_volume(raw, many, MP, InferenceParams(**old, batch_size=8))
    assert _score(a.segmentation, labels)["adapted_rand_error"] < 0.01
    np.testing.assert_array_equal(a.segmentation, b.segmentation)
    assert max(many.batches) > 1 and many.calls < one.calls


class StopAfter:
    """A stop flag that turns on after `n` checks (as a signal would, mid-run)."""

    def __init__(self, n):
        self.n = n

    def __bool__(self):
        self.n -= 1
        return self.n < 0


def test_stop_saves_state_and_a_second_run_continues_to_the_same_result(tmp_path):
    raw, _labels = _scene(seed=5)
    params = InferenceParams(min_segment_size=50)
    never = StopAfter(10**9)  # counts how often a run checks for a stop
    full = segment_volume(raw, Oracle(), MP, params, stop=never)
    checks = 10**9 - never.n
    state = tmp_path / "seg.h5.state"
    first = segment_volume(raw, Oracle(), MP, params, state_path=state, fp="abc", stop=StopAfter(checks // 2))
    assert not first.finished and state.is_file()
    seg, seeds, next_seed, _next_id, origins = load_state(state, "abc", raw.shape)
    # the stop came during the first seeds' fills: every seed before next_seed is done, the
    # interrupted one is tried again on resume
    assert 0 < next_seed < len(seeds) and first.seeds_tried == next_seed
    assert np.array_equal(output_segmentation(seg), first.segmentation)
    assert load_state(state, "other inputs", raw.shape) is None  # a different run does not resume it
    assert sorted(origins) == list(range(1, first.segments + 1))  # the saved segments' origins
    second_oracle = Oracle()
    second = segment_volume(raw, second_oracle, MP, params, state_path=state, fp="abc")
    assert second.finished
    np.testing.assert_array_equal(second.segmentation, full.segmentation)
    assert second.seeds_tried == len(seeds)
    # origins come through resume: the same starts and step counts as the uninterrupted run's
    assert {i: (o.start, o.steps) for i, o in second.origins.items()} == \
        {i: (o.start, o.steps) for i, o in full.origins.items()}
    assert sorted(full.origins) == list(range(1, full.segments + 1))
    for ident, o in full.origins.items():
        assert full.segmentation[o.start] == ident and o.steps >= 1 and o.seconds >= 0


class StopWhenCalled:
    """Turns on during the model call number `n` (a signal arriving in the middle of a fill)."""

    def __init__(self, oracle, n):
        self.oracle, self.n, self.on = oracle, n, False

    def __call__(self, batch):
        self.n -= 1
        self.on = self.on or self.n < 0
        return self.oracle(batch)

    def __bool__(self):
        return self.on


def test_a_stop_inside_one_fill_abandons_it_and_resume_redoes_that_seed(tmp_path):
    raw, _labels = _scene(seed=5)
    params = InferenceParams(min_segment_size=50)
    full = segment_volume(raw, Oracle(), MP, params)
    state = tmp_path / "seg.h5.state"
    stopper = StopWhenCalled(Oracle(), 2)  # fires during the first fill's third model call
    first = segment_volume(raw, stopper, MP, params, state_path=state, fp="abc", stop=stopper)
    assert not first.finished
    seg, seeds, next_seed, next_id, _origins = load_state(state, "abc", raw.shape)
    first_fill = next(i for i, p in enumerate(seeds) if all(4 <= v < n - 4 for v, n in zip(p, raw.shape)))
    # the abandoned fill left nothing behind, not even a -1 marker
    assert next_seed == first_fill and next_id == 1 and not seg.any()
    second = segment_volume(raw, Oracle(), MP, params, state_path=state, fp="abc")
    assert second.finished
    np.testing.assert_array_equal(second.segmentation, full.segmentation)


def test_invert_origins_seeds_at_the_forward_fill_starts_last_segment_first():
    from hpcffn.io.origins import inverted_seeds

    raw, labels = _scene(seed=3)
    params = InferenceParams(min_segment_size=50)
    forward = segment_volume(raw, Oracle(), MP, params)
    assert forward.segments >= 5
    seeds = inverted_seeds(forward.origins)
    # FFN's PolicyInvertOrigins: origins sorted by segment id, descending
    assert [tuple(s) for s in seeds] == [forward.origins[i].start for i in range(forward.segments, 0, -1)]
    reverse = segment_volume(raw, Oracle(), MP, params.model_copy(update={"seed_policy": "invert_origins"}),
                             seeds=seeds)
    # the reverse pass's first segment grows from the forward pass's last
    assert reverse.origins[1].start == forward.origins[forward.segments].start
    assert {o.start for o in reverse.origins.values()} <= {o.start for o in forward.origins.values()}
    assert _score(reverse.segmentation, labels)["adapted_rand_error"] < 0.05  # the same objects, found again
    with pytest.raises(HpcffnError, match="--origins"):
        segment_volume(raw, Oracle(), MP, params.model_copy(update={"seed_policy": "invert_origins"}))
