"""Parallel fills (`parallel_fills` > 1) must give exactly FFN's one-fill-at-a-time result.

No TensorFlow: the "model" is a numpy function of the whole FOV input, seed channel included,
so a fill that saw another fill's logits, or moved where an earlier segment had been committed,
would change the segmentation. Every id, every -1 marker and the count of useful FOVs must
equal the sequential run's.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_model_infer import StopAfter

from hpcffn.core.params import InferenceParams, ModelParams
from hpcffn.ffn import synthetic
from hpcffn.ffn.canvas import Canvas
from hpcffn.ffn.inference import load_state, segment_volume

MP = ModelParams(depth=2, fov_size=(9, 9, 9), deltas=(2, 2, 2), image_mean=125.0, image_stddev=65.0)


class CanvasSensitive:
    """Bright voxels are object, with a pull from the whole FOV's seed channel: any foreign or
    missing logit in the FOV changes every output voxel."""

    def __init__(self):
        self.batches = []

    def __call__(self, batch):
        self.batches.append(len(batch))
        image, seed = batch[..., 0], batch[..., 1]
        smooth = (image + np.roll(image, 1, 1) + np.roll(image, -1, 2)) / 3.0
        pull = 0.05 * seed.mean(axis=(1, 2, 3), keepdims=True)
        out = 0.3 * seed + np.where(smooth > 0.2, 3.6, -3.6) + pull + 0.02 * np.tanh(seed)
        return out[..., None].astype(np.float32)


def _scene(seed, shape=(30, 60, 60), radius=(4, 7), gap=2):
    raw, _labels = synthetic.balls_volume(shape, radius=radius, gap=gap, seed=seed)
    return raw


def _run(raw, width, **kw):
    model = CanvasSensitive()
    params = InferenceParams(parallel_fills=width, min_segment_size=30, **kw)
    return segment_volume(raw, model, MP, params, log=lambda s: None), model


@pytest.mark.parametrize("scene", [1, 2])
def test_parallel_fills_equal_the_sequential_segmentation_in_fewer_calls(scene):
    raw = _scene(scene)
    one, model_one = _run(raw, 1)
    assert one.segments >= 10 and one.fills >= 30  # a scene with work to do
    assert max(model_one.batches) == 1
    for width in (2, 4, 8):
        many, model = _run(raw, width)
        np.testing.assert_array_equal(many.segmentation, one.segmentation)
        assert (many.segments, many.fills, many.seeds_tried) == (one.segments, one.fills, one.seeds_tried)
        assert many.fov_evaluations - many.fov_wasted == one.fov_evaluations
        # FFN's origins: every segment's start and step count as the one-at-a-time loop's
        assert {i: (o.start, o.steps) for i, o in many.origins.items()} == \
            {i: (o.start, o.steps) for i, o in one.origins.items()}
        assert max(model.batches) == width
        assert len(model.batches) < 0.8 * len(model_one.batches)  # fewer model calls


@pytest.mark.parametrize("scene", [1, 2, 3])
def test_parallel_fills_equal_the_sequential_segmentation_where_fills_merge(scene, monkeypatch):
    """Balls 1 voxel apart, and fills started and run next to earlier ones (the spacing rules
    off): fills run into earlier segments and are redone, and the result is still FFN's."""
    from hpcffn.ffn.parallel_fills import ParallelFills

    raw = _scene(scene, shape=(36, 40, 44), radius=(4, 9), gap=1)
    one, _ = _run(raw, 1)
    monkeypatch.setattr(ParallelFills, "_reaches", lambda self, pos, g: False)
    monkeypatch.setattr(ParallelFills, "_near_live", lambda self, pos: False)
    for width in (2, 5):
        many, _ = _run(raw, width)
        np.testing.assert_array_equal(many.segmentation, one.segmentation)
        assert many.fov_evaluations - many.fov_wasted == one.fov_evaluations
        # FFN's origins: every segment's start and step count as the one-at-a-time loop's
        assert {i: (o.start, o.steps) for i, o in many.origins.items()} == \
            {i: (o.start, o.steps) for i, o in one.origins.items()}
        assert many.fov_wasted > 0


def test_parallel_fills_keep_the_minus_one_markers_and_the_canvas_clean():
    raw = _scene(2)
    params1 = InferenceParams(min_segment_size=30)
    c1 = Canvas(raw, CanvasSensitive(), MP, params1)
    params4 = InferenceParams(min_segment_size=30, parallel_fills=4)
    c4 = Canvas(raw, CanvasSensitive(), MP, params4)
    from hpcffn.ffn.inference import peak_seeds
    from hpcffn.ffn.parallel_fills import ParallelFills

    seeds = peak_seeds(c1.image, c1.fov, params1)
    one = segment_volume(raw, CanvasSensitive(), MP, params1, log=lambda s: None)
    runner = ParallelFills(c4, seeds, 4)
    head, next_id, done = runner.run(0, 1)
    assert done and head == len(seeds) and next_id - 1 == one.segments
    assert (c4.seg < 0).any()  # FFN's -1 markers of failed seeds, kept in the canvas
    np.testing.assert_array_equal(np.where(c4.seg < 0, 0, c4.seg), one.segmentation)
    assert np.isnan(c4.seed).all() and not runner.live  # the shared canvas untouched, nothing left behind


def test_stopped_parallel_run_resumes_to_the_same_result(tmp_path):
    raw = _scene(3)
    one, _ = _run(raw, 1)
    state = tmp_path / "state.h5"
    params = InferenceParams(parallel_fills=4, min_segment_size=30)

    first = segment_volume(raw, CanvasSensitive(), MP, params, state_path=state, fp="x", stop=StopAfter(40),
                           log=lambda s: None)
    assert not first.finished and load_state(state, "x", raw.shape) is not None
    second = segment_volume(raw, CanvasSensitive(), MP, params.model_copy(update={"parallel_fills": 1}),
                            state_path=state, fp="x", log=lambda s: None)
    assert second.finished
    np.testing.assert_array_equal(second.segmentation, one.segmentation)
    assert {i: (o.start, o.steps) for i, o in second.origins.items()} == \
        {i: (o.start, o.steps) for i, o in one.origins.items()}


def test_a_fill_whose_seed_an_earlier_segment_came_next_to_is_dropped_at_commit():
    """FFN skips a seed within min_boundary_dist of a segment (marking it -1); a speculative fill
    of that seed, started before the segment existed, is thrown away when its turn comes."""
    from hpcffn.ffn.parallel_fills import ParallelFills

    raw = _scene(1)
    canvas = Canvas(raw, CanvasSensitive(), MP, InferenceParams(min_segment_size=30, parallel_fills=2))
    seeds = np.array([[10, 20, 20], [15, 30, 30]])
    runner = ParallelFills(canvas, seeds, 2)
    runner._launch(1)
    runner._round()
    fill = runner.live[1]
    assert fill.evaluations == 1
    canvas.seg[15, 30, 31] = 7  # an earlier seed's segment, one voxel from this seed
    assert runner._commit(fill, 8) == 8  # no new segment
    assert canvas.seg[15, 30, 30] == -1 and runner.wasted == 1 and runner.fills == 0 and not runner.live
