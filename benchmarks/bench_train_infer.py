"""Benchmark FFN training (FOV examples/s) and inference (voxels/s) against an eager baseline.

Same model, same data, same process: the baseline runs every tf.function eagerly
(`tf.config.run_functions_eagerly(True)`), i.e. TensorFlow op by op; "ours" is the code as
shipped (tf.function graphs), optionally with XLA. Training goes through the real pipeline
(coordinate TFRecord -> HDF5 patches -> tf.data -> FOV moves -> optimizer steps) on a synthetic
volume; inference segments a synthetic volume with a model whose final bias makes it fill
everything, so every run evaluates the same FOVs (batched where they do not overlap).

    python benchmarks/bench_train_infer.py [--depth 12] [--fov 33] [--deltas 8] [--steps 12]
        [--volume 48] [--xla] [--workdir DIR]

Defaults are FFN's EM configuration (depth 12, FOV 33^3, deltas 8) and brief runs that fit
a 2-core CPU in a few minutes; on a GPU raise --steps and --volume.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _train_rate(args, work: Path, eager: bool, xla: bool) -> tuple[float, int]:
    import tensorflow as tf

    from hpcffn.core.params import ModelParams, TrainingParams
    from hpcffn.ffn.examples import PatchReader, TrainingVolume, make_dataset
    from hpcffn.ffn.training import Trainer
    from hpcffn.io.volumes import parse_location

    mp = ModelParams(depth=args.depth, fov_size=(args.fov,) * 3, deltas=(args.deltas,) * 3)
    tf.config.run_functions_eagerly(eager)
    try:
        tag = f"{'eager' if eager else 'graph'}{'_xla' if xla else ''}"
        tp = TrainingParams(max_steps=args.warmup, batch_size=args.batch, xla=xla, checkpoint_minutes=1e6)
        trainer = Trainer(mp, tp, work / f"train_{tag}", log=lambda s: None)
        vol = TrainingVolume("v", parse_location(f"{work}/v.h5:raw"), parse_location(f"{work}/v.h5:stack"))
        ds = make_dataset([str(work / "c.tfrecord.gz")], PatchReader([vol], mp), mp, args.batch, seed=1)
        # Warm-up steps (tracing, XLA compilation, pipeline start) are excluded: the same
        # trainer first runs `warmup` steps, then its budget is raised and the rest is timed.
        trainer.run(ds)
        trainer.tp = tp.model_copy(update={"max_steps": args.warmup + args.steps})
        t0 = time.perf_counter()
        res = trainer.run(ds)
        dt = time.perf_counter() - t0
        return res.fov_examples / dt, res.step - args.warmup
    finally:
        tf.config.run_functions_eagerly(False)


def _infer_rate(args, image, eager: bool, batch: int, xla: bool) -> tuple[float, int]:
    import tensorflow as tf

    from hpcffn.core.params import InferenceParams, ModelParams
    from hpcffn.ffn.inference import make_predict, segment_volume
    from hpcffn.ffn.model import build_model

    mp = ModelParams(depth=args.depth, fov_size=(args.fov,) * 3, deltas=(args.deltas,) * 3)
    model = build_model(mp, seed=0)
    model.biases["conv_lom"].assign([20.0])  # predict "object" everywhere: a full, fixed fill
    # hpcffn 0.1's fill (face_centre) is the one that batches FOVs; the default FFN fill is
    # timed on real data by bench_infer_reference.py.
    params = InferenceParams(min_segment_size=1, batch_size=batch, seed_min_distance=args.volume,
                             movement_policy="face_centre", seed_policy="peaks_shuffled")
    tf.config.run_functions_eagerly(eager)
    try:
        predict = make_predict(model, (args.fov,) * 3, xla=xla)
        predict(image[None, : args.fov, : args.fov, : args.fov, None].repeat(2, -1).astype("float32"))  # warm-up
        t0 = time.perf_counter()
        res = segment_volume(image, predict, mp, params)
        dt = time.perf_counter() - t0
    finally:
        tf.config.run_functions_eagerly(False)
    return image.size / dt, res.fov_evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--fov", type=int, default=33)
    ap.add_argument("--deltas", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps (tracing/compiling the 7 FOV-step functions)")
    ap.add_argument("--volume", type=int, default=96, help="edge of the inference volume (voxels)")
    ap.add_argument("--infer-batch", type=int, default=8)
    ap.add_argument("--xla", action="store_true", help="also time XLA-compiled variants")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-infer", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    import tensorflow as tf

    from hpcffn.ffn import synthetic

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_ffn_"))
    work.mkdir(parents=True, exist_ok=True)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"device {device}; depth {args.depth}, FOV {args.fov}^3, deltas {args.deltas}, batch {args.batch}")
    size = args.fov + 2 * args.deltas
    edge = max(2 * size, args.volume)
    raw, labels = synthetic.balls_volume((edge,) * 3, radius=(size // 4, size // 2), gap=4, seed=1)
    synthetic.write_volume(work / "v.h5", raw, labels)
    margin = (size // 2,) * 3
    synthetic.write_coordinates(work / "c.tfrecord.gz", synthetic.sample_centers(labels, 500, margin, seed=1), "v")

    if not args.skip_train:
        base, n = _train_rate(args, work, eager=True, xla=False)
        print(f"train  baseline (eager)        {base:8.2f} FOV examples/s  ({n} steps)")
        ours, n = _train_rate(args, work, eager=False, xla=False)
        print(f"train  tf.function             {ours:8.2f} FOV examples/s  ({n} steps)  ratio {ours / base:.2f}x")
        if args.xla:
            x, n = _train_rate(args, work, eager=False, xla=True)
            print(f"train  tf.function + XLA       {x:8.2f} FOV examples/s  ({n} steps)  ratio {x / base:.2f}x")
    if not args.skip_infer:
        image = raw[: args.volume, : args.volume, : args.volume]
        base, n = _infer_rate(args, image, eager=True, batch=1, xla=False)
        print(f"infer  baseline (eager, 1 FOV) {base:8.0f} voxels/s  ({n} FOVs)")
        one, n = _infer_rate(args, image, eager=False, batch=1, xla=False)
        print(f"infer  tf.function, 1 FOV      {one:8.0f} voxels/s  ({n} FOVs)  ratio {one / base:.2f}x")
        many, n = _infer_rate(args, image, eager=False, batch=args.infer_batch, xla=False)
        print(f"infer  tf.function, batch {args.infer_batch:<4} {many:8.0f} voxels/s  ({n} FOVs)  ratio {many / base:.2f}x")
        if args.xla:
            x, n = _infer_rate(args, image, eager=False, batch=args.infer_batch, xla=True)
            print(f"infer  + XLA, batch {args.infer_batch:<10} {x:8.0f} voxels/s  ({n} FOVs)  ratio {x / base:.2f}x")


if __name__ == "__main__":
    main()
