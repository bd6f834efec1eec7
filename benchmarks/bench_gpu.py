"""GPU throughput of FFN inference and training, in one table: what a lab pays GPU-hours for.

Needs only the package (and TensorFlow with its GPUs); the data are synthetic, the network is
FFN's convstack_3d (depth 12, FOV 33^3, deltas 8 by default) with random weights.

- model call: FOV/s of the bare network call at batch sizes 1 .. 16 x widest parallel_fills,
  per precision (float32, mixed_float16): what the device can do;
- inference: FOV/s of whole flood-filling runs of K tiles side by side (ffn.inference.
  tiles_per_task, K = 1, 4, 16) with parallel_fills widths (1, 4), per precision: one task's
  throughput, canvas work included. The network's last bias is raised so that it predicts
  "object" everywhere and every run makes the same, data-independent fill (one segment per
  tile; parallel_fills then only shows its overhead, its gain depends on the tissue). Each row
  is compared with K = 1, width 1 in the same precision (target on a GPU: K = 16 >= 4x);
- training: FOV examples/s at batch sizes 4 .. 32 (global batch) under MirroredStrategy over
  all visible GPUs, the full pipeline (coordinates -> patches -> FOV moves -> optimizer).

    python benchmarks/bench_gpu.py                      # on a GPU node (minutes)
    python benchmarks/bench_gpu.py --tiny               # anywhere: a depth-2, FOV 9^3 version (seconds)

Put the table in docs/train_infer.md with the card's name (printed on the first line);
ffn.inference.fov_per_second for the plan's GPU-hour estimate is the inference FOV/s of the
tiles_per_task and precision you plan with.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _model(mp, precision: str):
    from hpcffn.ffn.model import build_model

    model = build_model(mp, seed=0, mixed_precision=precision == "mixed_float16")
    model.biases["conv_lom"].assign([20.0])  # "object" everywhere: a full, fixed fill
    return model


def call_rates(mp, precision: str, batches: list[int], seconds: float) -> dict[int, float]:
    """FOV/s of the bare model call per batch size (each timed for about `seconds`)."""
    from hpcffn.ffn.inference import make_predict
    from hpcffn.ffn.model import fov_zyx

    predict = make_predict(_model(mp, precision), fov_zyx(mp))
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        x = rng.normal(0, 1, (b, *fov_zyx(mp), 2)).astype(np.float32)
        predict(x)  # trace and warm up
        n, t0 = 0, time.perf_counter()
        while True:
            predict(x)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds:
                break
        out[b] = n * b / dt
    return out


def infer_rate(mp, precision: str, k: int, width: int, tile: int) -> dict:
    """One task of `k` synthetic tiles side by side: FOVs, model calls, wall time, FOV/s."""
    from hpcffn.core.params import InferenceParams
    from hpcffn.ffn import synthetic
    from hpcffn.ffn.inference import make_predict, segment_volume
    from hpcffn.ffn.model import fov_zyx
    from hpcffn.ffn.multi_tile import run_side_by_side

    predict = make_predict(_model(mp, precision), fov_zyx(mp))
    predict(np.zeros((1, *fov_zyx(mp), 2), np.float32))
    params = InferenceParams(parallel_fills=width, min_segment_size=1)
    tiles = [synthetic.balls_volume((tile,) * 3, radius=(tile // 8, tile // 4), gap=2, seed=i)[0] for i in range(k)]
    works = [lambda p, raw=raw: segment_volume(raw, p, mp, params, log=lambda s: None) for raw in tiles]
    t0 = time.perf_counter()
    _, stats = run_side_by_side(works, predict)
    dt = time.perf_counter() - t0
    return {"fovs": stats.fovs, "calls": stats.calls, "seconds": dt, "fov_s": stats.fovs / dt,
            "per_call": stats.fovs_per_call}


def train_rate(mp, batch: int, steps: int, warmup: int, work: Path) -> tuple[float, int]:
    """FOV examples/s of the training loop at global batch `batch` (MirroredStrategy, all GPUs)."""
    import tensorflow as tf

    from hpcffn.core.params import TrainingParams
    from hpcffn.ffn.examples import PatchReader, TrainingVolume, make_dataset
    from hpcffn.ffn.training import Trainer
    from hpcffn.io.volumes import parse_location

    strategy = tf.distribute.MirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    per_replica = max(1, batch // replicas)
    tp = TrainingParams(max_steps=warmup, batch_size=per_replica, checkpoint_minutes=1e6)
    trainer = Trainer(mp, tp, work / f"train_b{batch}", strategy=strategy, log=lambda s: None)
    vol = TrainingVolume("v", parse_location(f"{work}/v.h5:raw"), parse_location(f"{work}/v.h5:stack"))
    ds = make_dataset([str(work / "c.tfrecord.gz")], PatchReader([vol], mp), mp, per_replica * replicas, seed=1)
    trainer.run(ds)  # tracing and pipeline start, untimed
    trainer.tp = tp.model_copy(update={"max_steps": warmup + steps})
    t0 = time.perf_counter()
    res = trainer.run(ds)
    return res.fov_examples / (time.perf_counter() - t0), replicas


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="depth 2, FOV 9^3, small tiles and few steps (CPU, seconds)")
    ap.add_argument("--ks", type=int, nargs="+", default=None, help="tiles per task (default 1 4 16)")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="parallel_fills widths (default 1 4)")
    ap.add_argument("--precisions", nargs="+", default=None, choices=("float32", "mixed_float16"))
    ap.add_argument("--train-batches", type=int, nargs="+", default=None, help="default 4 8 16 32")
    ap.add_argument("--tile", type=int, default=None, help="tile edge (voxels) of the inference runs")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--skip-train", action="store_true")
    a = ap.parse_args(argv)

    import tensorflow as tf

    from hpcffn.core.params import ModelParams
    from hpcffn.ffn import synthetic
    from hpcffn.ffn.devices import use_onednn

    use_onednn()
    gpus = tf.config.list_physical_devices("GPU")
    if a.tiny:
        mp = ModelParams(depth=2, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2))
        ks, widths, precisions = a.ks or [1, 2], a.widths or [1, 2], a.precisions or ["float32"]
        batches, tile, steps, warmup, call_s = a.train_batches or [4, 8], a.tile or 24, a.train_steps or 3, 2, 0.2
    else:
        mp = ModelParams()
        ks, widths = a.ks or [1, 4, 16], a.widths or [1, 4]
        precisions = a.precisions or ["float32", "mixed_float16"]
        batches, tile, steps, warmup, call_s = a.train_batches or [4, 8, 16, 32], a.tile or 96, a.train_steps or 30, 10, 3.0
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    print(f"devices: {', '.join(names) if names else 'CPU only (no GPU visible)'}; TensorFlow {tf.__version__}; "
          f"convstack_3d depth {mp.depth}, FOV {mp.fov_size[0]}^3, deltas {mp.deltas[0]}" + (" (--tiny)" if a.tiny else ""),
          flush=True)
    rows: list[tuple] = []
    call_batches = sorted({1, *[k * w for k in ks for w in widths]})
    infer_rate(mp, precisions[0], 1, 1, tile)  # untimed: first-use costs (imports, seed finding's first call)
    for precision in precisions:
        rates = call_rates(mp, precision, call_batches, call_s)
        for b, r in rates.items():
            rows.append(("model call", precision, f"batch {b}", f"{r:.1f} FOV/s", f"{r / rates[1]:.2f}x batch 1"))
        base = None
        for k in ks:
            for w in widths:
                r = infer_rate(mp, precision, k, w, tile)
                base = base or r["fov_s"]
                rows.append(("inference", precision, f"K={k} parallel_fills={w}",
                             f"{r['fov_s']:.1f} FOV/s ({r['fovs']} FOVs, {r['per_call']:.1f}/call)",
                             f"{r['fov_s'] / base:.2f}x K=1"))
        print(f"  {precision}: done", flush=True)
    if not a.skip_train:
        work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
        size = mp.fov_size[0] + 2 * mp.deltas[0]
        raw, labels = synthetic.balls_volume((max(2 * size, 48),) * 3, radius=(size // 4, size // 2), gap=4, seed=1)
        synthetic.write_volume(work / "v.h5", raw, labels)
        synthetic.write_coordinates(work / "c.tfrecord.gz",
                                    synthetic.sample_centers(labels, 500, (size // 2,) * 3, seed=1), "v")
        base = None
        for b in batches:
            r, replicas = train_rate(mp, b, steps, warmup, work)
            base = base or r
            rows.append(("training", "float32", f"batch {b} on {replicas} replica(s)", f"{r:.1f} examples/s",
                         f"{r / base:.2f}x batch {batches[0]}"))
    widths_ = [max(len(str(c)) for c in col) for col in zip(*rows, ("what", "precision", "setting", "rate", "ratio"))]
    print()
    for row in [("what", "precision", "setting", "rate", "ratio"), *rows]:
        print("  ".join(str(c).ljust(n) for c, n in zip(row, widths_)))


if __name__ == "__main__":
    main()
