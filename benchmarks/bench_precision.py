"""What `ffn.inference.precision: mixed_float16` changes, on real FIB-25 with Google's weights.

Segments, in float32 and in mixed_float16 (float16 convolutions, float32 canvas),
- a corner crop of the FIB-25 reference box (shared/fib25/ts1_box132_raw.h5) and compares
  each with Google's own segmentation of that crop (VI split/merge, adapted Rand error, 0 a label);
- a box of FIB-25 training_sample2 (shared/fib25/ts2_dev/ts2_dev.h5) and compares each with
  the expert groundtruth (`stack`);
and prints FOVs, wall time and FOV/s per precision, and whether the two precisions agree.

    nice -n 10 python benchmarks/bench_precision.py [--fib25 ../shared/fib25] [--crop 64]
        [--box 52 72 72]

On a CPU, float16 convolutions are emulated and about 10x slower than float32 (use small
crops); the speed-up is a GPU figure (bench_gpu.py). Settings: FFN's (our defaults).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fib25", type=Path, default=repo.parent / "shared" / "fib25")
    ap.add_argument("--crop", type=int, default=64, help="edge of the corner crop of the 132^3 reference box")
    ap.add_argument("--box", type=int, nargs=3, default=(52, 72, 72), metavar=("Z", "Y", "X"),
                    help="size of the ts2_dev box (from its corner)")
    ap.add_argument("--replay", type=int, default=0, metavar="N",
                    help="instead: segment the ts1 crop in float32, then evaluate N of the FOV inputs it made "
                    "(spread over the run) in mixed_float16 too, and compare the logits (cheap where float16 is slow)")
    a = ap.parse_args()

    import h5py

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from hpcffn.core.params import InferenceParams, ModelParams
    from hpcffn.ffn.inference import make_predict, segment_volume
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.tf1_import import load_weights
    from hpcffn.stages.evaluate import compare

    ref = a.fib25
    with h5py.File(ref / "ts1_box132_raw.h5", "r") as f:
        ts1 = f["raw"][: a.crop, : a.crop, : a.crop]
    with h5py.File(ref / "ts1_box132_google_seg.h5", "r") as f:
        google = f["seg"][: a.crop, : a.crop, : a.crop].astype(np.uint64)
    box = tuple(slice(0, n) for n in a.box)
    with h5py.File(ref / "ts2_dev" / "ts2_dev.h5", "r") as f:
        ts2, stack = f["raw"][box], f["stack"][box]
    mp, params = ModelParams(), InferenceParams()
    checkpoint = str(ref / "model" / "model.ckpt-27465036")
    print(f"FIB-25, Google's weights, FFN's settings; ts1 crop {a.crop}^3 (vs Google's segmentation), ts2_dev box "
          f"{tuple(a.box)} (vs groundtruth); {os.cpu_count()} CPUs", flush=True)

    if a.replay:
        replay(a.replay, ts1, google, mp, params, checkpoint)
        return
    segs: dict[str, dict] = {}
    for precision in ("float32", "mixed_float16"):
        model = build_model(mp, mixed_precision=precision == "mixed_float16")
        load_weights(model, checkpoint)
        predict = make_predict(model, fov_zyx(mp))
        predict(np.zeros((1, *fov_zyx(mp), 2), np.float32))
        segs[precision] = {}
        for name, raw in (("ts1", ts1), ("ts2", ts2)):
            t0 = time.perf_counter()
            r = segment_volume(raw, predict, mp, params, log=lambda s: None)
            dt = time.perf_counter() - t0
            segs[precision][name] = r.segmentation
            truth = google + 1 if name == "ts1" else stack
            m = compare(r.segmentation + 1 if name == "ts1" else r.segmentation, truth)
            print(f"{precision:>13} {name}: {r.segments} segments, {r.fov_evaluations} FOVs, {dt:.0f} s "
                  f"({r.fov_evaluations / dt:.2f} FOV/s); against {'Google' if name == 'ts1' else 'groundtruth'}: "
                  f"VI split {m['vi_split']:.3f} merge {m['vi_merge']:.3f}, ARE {m['adapted_rand_error']:.4f}",
                  flush=True)
    for name in ("ts1", "ts2"):
        x, y = segs["float32"][name], segs["mixed_float16"][name]
        m = compare(y + 1, x + 1)
        print(f"{name}: mixed_float16 against float32: identical {np.array_equal(x, y)}, ARE {m['adapted_rand_error']:.4f}, "
              f"VI split {m['vi_split']:.3f} merge {m['vi_merge']:.3f}")


def replay(n: int, raw, google, mp, params, checkpoint) -> None:
    """The float32 run's own FOV inputs, evaluated again in mixed_float16: how far the logits move
    and how many voxels change side of the segment (0.6) and move (0.9) thresholds."""
    from hpcffn.ffn.canvas import option_logit
    from hpcffn.ffn.inference import make_predict, segment_volume
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.tf1_import import load_weights
    from hpcffn.stages.evaluate import compare

    calls = {}
    for precision in ("float32", "mixed_float16"):
        model = build_model(mp, mixed_precision=precision == "mixed_float16")
        load_weights(model, checkpoint)
        calls[precision] = make_predict(model, fov_zyx(mp))
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def recording(batch):
        out = calls["float32"](batch)
        seen.append((batch.copy(), out))
        return out

    t0 = time.perf_counter()
    r = segment_volume(raw, recording, mp, params, log=lambda s: None)
    dt = time.perf_counter() - t0
    m = compare(r.segmentation + 1, google + 1)
    print(f"float32: {r.segments} segments, {r.fov_evaluations} FOVs, {dt:.0f} s; against Google: VI split "
          f"{m['vi_split']:.3f} merge {m['vi_merge']:.3f}, ARE {m['adapted_rand_error']:.4f}", flush=True)
    picks = np.unique(np.linspace(0, len(seen) - 1, min(n, len(seen))).round().astype(int))
    seg_t, move_t = option_logit(params.segment_threshold), option_logit(params.move_threshold)
    diffs, seg_flips, move_flips, t16 = [], 0, 0, 0.0
    voxels = 0
    for i in picks:
        x, y32 = seen[i]
        t = time.perf_counter()
        y16 = calls["mixed_float16"](x)
        t16 += time.perf_counter() - t
        diffs.append(float(np.abs(y16 - y32).max()))
        seg_flips += int(np.count_nonzero((y16 >= seg_t) != (y32 >= seg_t)))
        move_flips += int(np.count_nonzero((y16 >= move_t) != (y32 >= move_t)))
        voxels += y32.size
    print(f"mixed_float16 on {len(picks)} of those {len(seen)} FOV inputs ({t16 / len(picks):.1f} s per FOV here): "
          f"largest logit difference {max(diffs):.3f} (median per FOV {np.median(diffs):.3f}); voxels on the other "
          f"side of segment_threshold {seg_flips}/{voxels} ({seg_flips / voxels:.2e}), of move_threshold "
          f"{move_flips}/{voxels} ({move_flips / voxels:.2e})")


if __name__ == "__main__":
    main()
