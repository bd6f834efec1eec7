"""Agreement with Google FFN's own inference on real FIB-25 EM (the shared reference box).

Needs ../shared/fib25 (README.md there): the 132^3 raw box and Google's segmentation of it made
with the FIB-25 weights that hpcffn ships as `fib25`. Skipped when the reference is absent.
The whole-box comparison is benchmarks/bench_infer_reference.py (minutes); here the seeds are
checked on the whole box and the first segments of a run cut short.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "fib25"

pytestmark = pytest.mark.skipif(
    not (REFERENCE / "ts1_box132_raw.h5").is_file(),
    reason=f"the FIB-25 reference box is not at {REFERENCE} (shared/fib25 of the development setup)",
)


def _read(name: str, dataset: str) -> np.ndarray:
    import h5py

    with h5py.File(REFERENCE / name, "r") as f:
        return f[dataset][...]


def test_policy_peaks_finds_googles_2403_maxima():
    pytest.importorskip("skimage")
    from hpcffn.core.params import InferenceParams, ModelParams
    from hpcffn.ffn.inference import peak_seeds
    from hpcffn.ffn.model import fov_zyx, normalize_image

    mp = ModelParams()
    seeds = peak_seeds(normalize_image(_read("ts1_box132_raw.h5", "raw"), mp), fov_zyx(mp), InferenceParams())
    assert len(seeds) == 2403  # "peaks: found 2403 local maxima" in Google's run
    assert [tuple(p) for p in seeds] == sorted(tuple(p) for p in seeds)


class Budget:
    """Counts model calls; as a stop flag it turns on after `n` of them."""

    def __init__(self, predict, n: int):
        self.predict, self.n, self.calls = predict, n, 0

    def __call__(self, batch):
        self.calls += len(batch)
        return self.predict(batch)

    def __bool__(self):
        return self.calls >= self.n


@pytest.mark.slow
@pytest.mark.tf
def test_first_segments_match_googles(tmp_path):
    """Run the default inference with the shipped fib25 weights for 150 FOVs (1-2 minutes on 2
    CPU cores): the segments finished by then are Google's first ones, in the same order (by then
    Google's run has made segment 1 and rejected two seeds; segment 2 needs far more FOVs)."""
    pytest.importorskip("tensorflow")
    from hpcffn.ffn.devices import use_onednn

    use_onednn()
    from hpcffn.core.params import InferenceParams, ModelParams
    from hpcffn.ffn.inference import make_predict, segment_volume
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.tf1_import import load_weights

    mp = ModelParams()
    model = build_model(mp)
    load_weights(model, "fib25")
    budget = Budget(make_predict(model, fov_zyx(mp)), 150)
    res = segment_volume(_read("ts1_box132_raw.h5", "raw"), budget, mp, InferenceParams(), stop=budget,
                         log=lambda s: None)
    google = _read("ts1_box132_google_seg.h5", "seg")
    ours = res.segmentation
    assert not res.finished and res.segments >= 1 and res.fills >= 3, res
    for sid in range(1, res.segments + 1):
        a, b = ours == sid, google == sid
        iou = np.count_nonzero(a & b) / np.count_nonzero(a | b)
        assert iou > 0.98, (sid, iou, np.count_nonzero(a), np.count_nonzero(b))  # here: 1.0
    assert not np.any(ours > res.segments)
