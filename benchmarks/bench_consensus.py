"""Forward-reverse split consensus against a single FFN pass, on real FIB-25 groundtruth.

Segments a box of `shared/fib25/ts2_dev/ts2_dev.h5:raw` (FIB-25 training_sample2, dense expert
groundtruth `stack`) with Google's published FIB-25 weights: a forward pass (FFN's PolicyPeaks
seeds), a reverse pass (`invert_origins`: the forward pass's fill starts, last segment first),
and FFN's split consensus of the two. For each it prints VI (split, merge; bits), adapted Rand
error (precision, recall), segment count and FOV evaluations against `stack`, groundtruth 0
ignored (voxels a segmentation leaves at 0 count as one more segment), on the box's inner
region with `--context` voxels kept out on every side (they never see a full FOV of image).

    nice -n 10 python benchmarks/bench_consensus.py [--data ts2_dev.h5] [--box z0,y0,x0:dz,dy,dx]
        [--settings ffn,manual] [--split-min-size 1000] [--workdir DIR] [--parallel-fills N]

Consensus rows: FFN's (`split_min_size` pieces become 0), `consensus 0` (no piece removed) and
`... fwd` (`small_pieces: forward`: pieces below split_min_size keep their forward id).

`--settings`: `ffn` = the settings Google documents for this checkpoint (our defaults,
shared/fib25/README.md); `manual` = the newer ones FFN's manual recommends (pad_value 0.5,
move_threshold 0.6, min_boundary_dist 2,2,1). Each pass's segmentation (with its origins) is
kept in `--workdir` and reused by a later run with the same box and settings, so the table can
be re-printed, or the consensus rules changed, without segmenting again.

Targets (consensus against the forward pass of the same settings): VI merge <= 0.75 x forward's,
total VI and adapted Rand error both below forward's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent.parent / "shared" / "fib25" / "ts2_dev" / "ts2_dev.h5"
SETTINGS = {
    "ffn": {},
    "manual": {"pad_value": 0.5, "move_threshold": 0.6, "min_boundary_dist": (2, 2, 1)},
}
TARGET_MERGE_RATIO = 0.75


def parse_box(text: str):
    start, _, size = text.partition(":")
    s = tuple(int(v) for v in start.split(","))
    n = tuple(int(v) for v in size.split(","))
    if len(s) != 3 or len(n) != 3:
        raise SystemExit(f"--box {text!r}: write z0,y0,x0:dz,dy,dx")
    return s, n


def run_pass(raw, predict, mp, params, seeds, path: Path, log):
    """One inference pass, saved to `path` (seg + origins + counters); reused when present
    (None when absent and `predict` is None: --cached-only)."""
    import h5py

    from hpcffn.ffn.inference import segment_volume
    from hpcffn.io import origins as origin_table
    from hpcffn.io.volumes import atomic_h5

    if path.is_file():
        with h5py.File(path, "r") as f:
            return f["seg"][...], origin_table.read(f), dict(f.attrs)
    if predict is None:
        return None
    t0 = time.perf_counter()
    res = segment_volume(raw, predict, mp, params, state_path=path.with_name(path.name + ".state"),
                         fp=path.name, seeds=seeds, log=log)
    attrs = {"fov_evaluations": res.fov_evaluations - res.fov_wasted, "seconds": time.perf_counter() - t0,
             "fills": res.fills, "segments": res.segments}
    with atomic_h5(path) as f:
        f.create_dataset("seg", data=res.segmentation, compression="gzip", compression_opts=1)
        origin_table.write(f, res.origins)
        f.attrs.update(attrs)
    path.with_name(path.name + ".state").unlink(missing_ok=True)
    return res.segmentation, res.origins, attrs


def score(seg, gt, inner) -> dict:
    from hpcffn.stages.evaluate import compare

    m = compare(seg[inner], gt[inner])
    m["vi"] = m["vi_split"] + m["vi_merge"]
    m["unsegmented"] = float(np.mean(seg[inner] == 0))
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HDF5 with `raw` and `stack` (ts2_dev.h5)")
    ap.add_argument("--box", default="0,69,69:118,112,112",
                    help="z0,y0,x0:dz,dy,dx to segment (default: all z, the central 112x112 in y,x; "
                    "the whole volume is 0,0,0:118,250,250, about 8,000 FOVs per pass)")
    ap.add_argument("--context", type=int, default=16, help="voxels at each face of the box kept out of the score")
    ap.add_argument("--settings", default="ffn,manual", help="comma-separated: ffn, manual")
    ap.add_argument("--split-min-size", type=int, default=1000, help="consensus: smaller pieces become 0 (FFN: 1000)")
    ap.add_argument("--checkpoint", default="fib25", help="checkpoint prefix or pretrained name")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_consensus"),
                    help="where each pass's segmentation is kept (and reused)")
    ap.add_argument("--parallel-fills", type=int, default=1, help="seeds filled side by side (same segmentation)")
    ap.add_argument("--cached-only", action="store_true",
                    help="segment nothing: score the passes already in --workdir (a setting whose reverse pass is "
                    "missing gets its forward row only)")
    a = ap.parse_args()

    import h5py

    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    from hpcffn.core.params import InferenceParams, ModelParams
    from hpcffn.core.pretrained import pretrained
    from hpcffn.ffn.consensus import split_consensus
    from hpcffn.ffn.inference import make_predict
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.tf1_import import load_weights
    from hpcffn.io import origins as origin_table

    start, size = parse_box(a.box)
    box = tuple(slice(s, s + n) for s, n in zip(start, size))
    with h5py.File(a.data, "r") as f:
        raw = f["raw"][box]
        gt = f["stack"][box]
    c = a.context
    inner = tuple(slice(c, n - c) for n in size)
    if any(n <= 2 * c for n in size):
        raise SystemExit(f"--box size {size} leaves nothing after {c} voxels of context on each side")
    mp = ModelParams()
    p = pretrained(a.checkpoint)
    ckpt = p.path() if p else a.checkpoint
    predict = None
    if not a.cached_only:
        model = build_model(mp)
        load_weights(model, ckpt)
        predict = make_predict(model, fov_zyx(mp))
    a.workdir.mkdir(parents=True, exist_ok=True)
    tag = "_".join(map(str, start + size))

    def log(s):
        print(s, file=sys.stderr, flush=True)

    print(f"data {a.data} box start {start} size {size} (z,y,x); scored inner region "
          f"{tuple(n - 2 * c for n in size)} ({c} voxels of context kept out); checkpoint {ckpt}; "
          f"split_min_size {a.split_min_size}; {len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.1f}")
    rows = []
    for name in a.settings.split(","):
        params = InferenceParams(checkpoint_minutes=2.0, parallel_fills=a.parallel_fills, **SETTINGS[name])
        forward = run_pass(raw, predict, mp, params, None, a.workdir / f"{name}_{tag}_forward.h5", log)
        if forward is None:
            print(f"{name}: no forward pass in {a.workdir} (--cached-only)")
            continue
        fwd, fwd_origins, fa = forward
        log(f"{name} forward: {fa}")
        rows.append((f"{name} forward", score(fwd, gt, inner), int(fa["fov_evaluations"]), fa["seconds"]))
        rev_params = params.model_copy(update={"seed_policy": "invert_origins"})
        reverse = run_pass(raw, predict, mp, rev_params, origin_table.inverted_seeds(fwd_origins),
                           a.workdir / f"{name}_{tag}_reverse.h5", log)
        if reverse is None:
            print(f"{name}: no reverse pass in {a.workdir} (--cached-only)")
            continue
        rev, _, ra = reverse
        log(f"{name} reverse: {ra}")
        both = int(fa["fov_evaluations"] + ra["fov_evaluations"])
        rows.append((f"{name} reverse", score(rev, gt, inner), int(ra["fov_evaluations"]), ra["seconds"]))
        # FFN's consensus, then the ways to keep its small pieces: every piece its own segment
        # (split_min_size 0), or small pieces back to their forward segment (small_pieces forward)
        for label, size, small in ((f"consensus {a.split_min_size}", a.split_min_size, "drop"),
                                   ("consensus 0", 0, "drop"),
                                   (f"consensus {a.split_min_size} fwd", a.split_min_size, "forward")):
            cons, _ = split_consensus(fwd.astype(np.uint64), rev.astype(np.uint64), size, small=small)
            rows.append((f"{name} {label}", score(cons, gt, inner), both, None))
    print()
    head = (f"| {'run':22s} | {'VI split':>8s} | {'VI merge':>8s} | {'VI':>6s} | {'ARE':>6s} | {'precision':>9s} "
            f"| {'recall':>6s} | {'segments':>8s} | {'unsegm.':>7s} | {'FOVs':>6s} |")
    print(head)
    print("|" + "|".join("-" * (len(col)) for col in head.split("|")[1:-1]) + "|")
    for label, m, fovs, _secs in rows:
        print(f"| {label:22s} | {m['vi_split']:8.4f} | {m['vi_merge']:8.4f} | {m['vi']:6.4f} | "
              f"{m['adapted_rand_error']:6.4f} | {m['rand_precision']:9.4f} | {m['rand_recall']:6.4f} | "
              f"{m['segments']:8d} | {m.get('unsegmented', float('nan')):7.3f} | {fovs:6d} |")
    print()
    for name in a.settings.split(","):
        got = {label.split(" ", 1)[1]: m for label, m, _, _ in rows if label.startswith(name + " ")}
        if "forward" not in got:
            continue
        fw = got["forward"]
        for variant, co in got.items():
            if not variant.startswith("consensus"):
                continue
            ok_merge = co["vi_merge"] <= TARGET_MERGE_RATIO * fw["vi_merge"]
            ok_vi = co["vi"] < fw["vi"]
            ok_are = co["adapted_rand_error"] < fw["adapted_rand_error"]
            print(f"{name} {variant}: VI merge {co['vi_merge']:.4f} vs {TARGET_MERGE_RATIO} x forward "
                  f"{TARGET_MERGE_RATIO * fw['vi_merge']:.4f} {'ok' if ok_merge else 'MISSED'}; VI {co['vi']:.4f} vs "
                  f"{fw['vi']:.4f} {'ok' if ok_vi else 'MISSED'}; ARE {co['adapted_rand_error']:.4f} vs "
                  f"{fw['adapted_rand_error']:.4f} {'ok' if ok_are else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
