"""FFN training loop: FOV moves, loss, optimizer, checkpoints, signals, summaries, strategies.

Per batch of patches (FOV + 2*deltas), a step at the centre and then, for the six +-delta
offsets in random order, a step at each offset whose current predicted probability there
reaches the move threshold — FFN's training policy. Every step's prediction is written back
into the batch's canvas so later steps see it, and every step is one optimizer update; the
step counter (`max_steps` is a total budget) lives in the checkpoint, so a requeued job trains
only what is left. SIGUSR1/SIGTERM save a checkpoint and return EXIT_REQUEUE.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import EXIT_REQUEUE
from hpcffn.core.params import ModelParams, TrainingParams
from hpcffn.ffn.examples import TrainingVolume
from hpcffn.ffn.model import CANVAS_LOGIT_LIMIT

SUMMARY_EVERY = 50  # steps between TensorBoard summaries / log lines


@dataclass
class TrainResult:
    exit_code: int
    step: int
    mean_losses: list  # mean loss of each summary interval (for logs and tests)
    fov_examples: int = 0  # (example, FOV position) pairs trained by this run


def signal_name(signum: int | None) -> str:
    """"SIGUSR1" for 10: logs name signals the way `scancel --signal` and sbatch do."""
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return f"signal {signum}"


class StopFlag:
    """Set by SIGUSR1/SIGTERM; the loop checks it between steps."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        from hpcffn.core.signals import STOP_SIGNALS, take_early

        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner thread): no signals
                pass
        self.signum = take_early()  # one that came while TensorFlow was loading
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __bool__(self) -> bool:
        return self.signum is not None


class _OneTracePerOffset(logging.Filter):
    """Drop TF's retracing warning: the seven FOV-step functions (one per offset) are each
    traced exactly once, which TF's heuristic, counting them together, reports as retracing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_known_retracing() -> None:
    import tensorflow as tf

    logger = tf.get_logger()
    if not any(isinstance(f, _OneTracePerOffset) for f in logger.filters):
        logger.addFilter(_OneTracePerOffset())


def make_strategy():
    """MultiWorkerMirrored (SLURM resolver) across nodes, Mirrored across GPUs, else default."""
    import os

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if int(os.environ.get("SLURM_NNODES", "1") or 1) > 1 and os.environ.get("SLURM_PROCID") is not None:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver()
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def write_scalar(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar without needing the tensorboard package (tf.summary.scalar does)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta.SerializeToString())


def _new_interval() -> dict:
    return {"loss": 0.0, "tp": 0.0, "fp": 0.0, "fn": 0.0, "fovs": 0, "t": time.monotonic()}


def _task_id(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0


def _is_chief(strategy) -> bool:
    """True unless this is a non-chief worker of a multi-worker job."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and _task_id(strategy) == 0)


def _offsets(deltas_zyx) -> list[tuple[int, int, int]]:
    out = []
    for axis in range(3):
        if deltas_zyx[axis] == 0:
            continue
        for sign in (-1, 1):
            o = [0, 0, 0]
            o[axis] = sign * deltas_zyx[axis]
            out.append(tuple(o))
    return out


class Trainer:
    """Builds model, optimizer and step functions under a strategy; runs the FOV-move loop."""

    def __init__(self, model_params: ModelParams, train_params: TrainingParams, train_dir: Path, strategy=None,
                 log=print):
        import tensorflow as tf

        from hpcffn.ffn.model import (
            LOGIT_005,
            LOGIT_095,
            build_model,
            deltas_zyx,
            fov_zyx,
            logit,
        )

        self.mp, self.tp = model_params, train_params
        self.log = log  # every line this trainer says goes here (the CLI's print, a test's collector)
        self.train_dir = Path(train_dir)
        self.strategy = strategy or make_strategy()
        self.fov = fov_zyx(model_params)
        self.deltas = deltas_zyx(model_params)
        self.size = tuple(f + 2 * d for f, d in zip(self.fov, self.deltas))
        self.center = tuple(s // 2 for s in self.size)
        self.move_logit = logit(train_params.move_threshold)
        mixed = train_params.mixed_precision and bool(tf.config.list_physical_devices("GPU"))
        if train_params.mixed_precision and not mixed:
            log("hpcffn train: mixed precision needs a GPU; training in float32")
        self.mixed = mixed
        with self.strategy.scope():
            self.model = build_model(model_params, seed=train_params.seed, mixed_precision=mixed)
            if train_params.optimizer == "adam":
                opt = tf.keras.optimizers.Adam(train_params.learning_rate, global_clipnorm=train_params.clip_gradient_norm)
            else:
                opt = tf.keras.optimizers.SGD(train_params.learning_rate, momentum=train_params.momentum,
                                              global_clipnorm=train_params.clip_gradient_norm)
            if mixed:
                opt = tf.keras.optimizers.LossScaleOptimizer(opt)
            self.optimizer = opt
            self.variables = list(self.model.trainable_variables)
            self.optimizer.build(self.variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, step=self.step)
        # Multi-worker: every worker takes part in saving, but only the chief writes to the
        # train dir; the others write to a private scratch dir inside it.
        self.is_chief = _is_chief(self.strategy)
        save_dir = self.train_dir if self.is_chief else self.train_dir / f".worker{_task_id(self.strategy)}"
        self.manager = tf.train.CheckpointManager(self.ckpt, str(save_dir), max_to_keep=3, checkpoint_name="ckpt")
        self._logit095, self._logit005 = LOGIT_095, LOGIT_005
        self._steps = {}
        _quiet_known_retracing()
        self._grad_fn = tf.function(self._grads, jit_compile=bool(train_params.xla))

    # ----- pieces run per replica -----
    def _grads(self, inputs, labels, active, n_global):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = self.model(inputs)
            xent = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            per_example = tf.reduce_mean(xent, axis=[1, 2, 3, 4])
            loss = tf.reduce_sum(per_example * active) / n_global
            scaled = self.optimizer.scale_loss(loss) if self.mixed else loss
        grads = tape.gradient(scaled, self.variables)
        return logits, grads, tf.reduce_sum(per_example * active)

    def _fov_slices(self, offset):
        return tuple(
            slice(c + o - f // 2, c + o - f // 2 + f) for c, o, f in zip(self.center, offset, self.fov)
        )

    def _make_step(self, offset):
        import tensorflow as tf

        sl = (slice(None),) + self._fov_slices(offset) + (slice(None),)
        pads = [[0, 0]] + [[s.start, n - s.stop] for s, n in zip(sl[1:4], self.size)] + [[0, 0]]

        def replica_fn(images, labels, canvas, active, n_global):
            img, lab, seed = images[sl], labels[sl], canvas[sl]
            logits, grads, loss_sum = self._grad_fn(tf.concat([img, seed], axis=-1), lab, active, n_global)
            self.optimizer.apply_gradients(zip(grads, self.variables))
            a = active[:, None, None, None, None]
            written = tf.clip_by_value(logits, -CANVAS_LOGIT_LIMIT, CANVAS_LOGIT_LIMIT)
            canvas = canvas + tf.pad((written - seed) * a, pads)
            pred = tf.cast(logits > 0, tf.float32) * a
            true = tf.cast(lab > 0.5, tf.float32) * a
            stats = tf.stack([
                loss_sum,
                tf.reduce_sum(pred * true),
                tf.reduce_sum(pred * (1 - true)),
                tf.reduce_sum((1 - pred) * true),
            ])
            return canvas, stats

        @tf.function
        def step(images, labels, canvas, active, n_global):
            return self.strategy.run(replica_fn, args=(images, labels, canvas, active, n_global))

        return step

    def _active(self, canvas, offset):
        """1.0 for examples whose canvas at the move target reaches the move threshold."""
        import tensorflow as tf

        if offset == (0, 0, 0):
            return tf.ones(tf.shape(canvas)[:1], tf.float32)
        z, y, x = (c + o for c, o in zip(self.center, offset))
        return tf.cast(canvas[:, z, y, x, 0] >= self.move_logit, tf.float32)

    def _init_canvas(self, labels):
        import tensorflow as tf

        canvas = tf.fill(tf.shape(labels), tf.constant(self._logit005, tf.float32))
        z, y, x = self.center
        onehot = tf.scatter_nd([[z, y, x, 0]], [self._logit095 - self._logit005], self.size + (1,))
        return canvas + onehot[None]

    # ----- the loop -----
    def restore(self, init_checkpoint: str | None) -> None:
        """Resume from the latest checkpoint in train_dir, else start from `init_checkpoint` if given."""
        if self.manager.latest_checkpoint:
            import tensorflow as tf

            try:
                self.ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as exc:
                raise HpcffnError(
                    f"cannot resume from {self.manager.latest_checkpoint}: it was written with other model or "
                    f"optimizer settings ({str(exc).splitlines()[0][:120]}); restore those settings or use a new train dir"
                ) from None
            self.log(f"hpcffn train: resumed from {self.manager.latest_checkpoint} at step {int(self.step.numpy())}")
        elif init_checkpoint:
            from hpcffn.ffn.tf1_import import load_weights

            load_weights(self.model, init_checkpoint)
            self.log(f"hpcffn train: initialised weights from {init_checkpoint}")

    def save(self) -> str:
        return self.manager.save(checkpoint_number=int(self.step.numpy()))

    def run(self, dataset, stop: StopFlag | None = None) -> TrainResult:
        import tensorflow as tf

        tp, log = self.tp, self.log
        stop = stop if stop is not None else StopFlag()
        rng = np.random.default_rng(tp.seed + int(self.step.numpy()))
        dist = self.strategy.experimental_distribute_dataset(dataset)
        writer = (tf.summary.create_file_writer(str(self.train_dir)) if self.is_chief
                  else tf.summary.create_noop_writer())
        moves = _offsets(self.deltas)
        if not self._steps:
            for off in [(0, 0, 0)] + moves:
                self._steps[off] = self._make_step(off)
        last_save = time.monotonic()
        interval = _new_interval()
        losses: list[float] = []
        total_fovs = 0
        step = int(self.step.numpy())
        if step >= tp.max_steps:
            log(f"hpcffn train: step {step} already reached max_steps {tp.max_steps}; nothing to do")
            return TrainResult(0, step, losses, total_fovs)
        it = iter(dist)
        sum_ = tf.distribute.ReduceOp.SUM
        while step < tp.max_steps and not stop:
            images, labels = next(it)
            canvas = self.strategy.run(self._init_canvas, args=(labels,))
            order = [(0, 0, 0)] + [moves[i] for i in rng.permutation(len(moves))]
            for off in order:
                if step >= tp.max_steps or stop:
                    break
                active = self.strategy.run(self._active, args=(canvas, off))
                n = float(self.strategy.reduce(sum_, self.strategy.run(tf.reduce_sum, args=(active,)), axis=None))
                if n == 0:
                    continue
                canvas, stats = self._steps[off](images, labels, canvas, active, tf.constant(n, tf.float32))
                s = self.strategy.reduce(sum_, stats, axis=None).numpy()
                step += 1
                self.step.assign(step)
                interval["loss"] += float(s[0])
                interval["tp"] += float(s[1])
                interval["fp"] += float(s[2])
                interval["fn"] += float(s[3])
                interval["fovs"] += int(n)
                total_fovs += int(n)
                if step % SUMMARY_EVERY == 0 or step == tp.max_steps:
                    losses.append(self._summarize(writer, interval, step))
                    interval = _new_interval()
            if time.monotonic() - last_save >= tp.checkpoint_minutes * 60:
                self.save()
                last_save = time.monotonic()
        path = self.save()
        writer.flush()
        if stop and step < tp.max_steps:
            log(f"hpcffn train: {signal_name(stop.signum)} at step {step}: checkpoint saved to {path}; "
                "work remains (exit 75)")
            return TrainResult(EXIT_REQUEUE, step, losses, total_fovs)
        log(f"hpcffn train: reached max_steps {tp.max_steps}: saved {path}")
        return TrainResult(0, step, losses, total_fovs)

    def _summarize(self, writer, iv, step) -> float:
        elapsed = max(time.monotonic() - iv["t"], 1e-9)
        loss = iv["loss"] / max(iv["fovs"], 1)
        precision = iv["tp"] / max(iv["tp"] + iv["fp"], 1.0)
        recall = iv["tp"] / max(iv["tp"] + iv["fn"], 1.0)
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        with writer.as_default(step=step):
            for tag, value in (("loss", loss), ("precision", precision), ("recall", recall), ("f1", f1),
                               ("examples_per_second", iv["fovs"] / elapsed)):
                write_scalar(tag, value, step)
        self.log(f"hpcffn train: step {step} loss {loss:.4f} precision {precision:.3f} recall {recall:.3f} "
            f"f1 {f1:.3f} {iv['fovs'] / elapsed:.1f} FOV examples/s")
        return loss


def remove_partial_checkpoints(train_dir: Path) -> None:
    """TensorFlow saves into ckpt-N_temp/ and renames; a failed or killed save leaves the folder."""
    import shutil

    for partial in Path(train_dir).glob("ckpt-*_temp"):
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)


def train(coordinate_files: list[str], volumes: list[TrainingVolume], model_params: ModelParams,
          train_params: TrainingParams, train_dir: str | Path, log=print) -> TrainResult:
    """Train one model; 0 when max_steps is reached, EXIT_REQUEUE after a signal-triggered checkpoint."""
    import tensorflow as tf

    from hpcffn.ffn.devices import environment_line
    from hpcffn.ffn.examples import (
        PatchReader,
        make_dataset,
        op_error_lines,
        peek_records,
    )
    from hpcffn.ffn.examples import coordinate_files as check_files

    files = check_files(coordinate_files)
    # A multi-worker strategy must exist before any other TensorFlow op runs.
    strategy = make_strategy()
    log(environment_line("train"))
    if not volumes:
        raise HpcffnError("no training volumes: pass --volume name:raw.h5:raw:labels.h5:stack")
    records = peek_records(files)
    if not records:
        raise HpcffnError(f"coordinate files {files[0]}... hold no records: re-run the coordinates stage")
    known = {v.name for v in volumes}
    unknown = sorted({nm for _, nm in records} - known)
    if unknown:
        raise HpcffnError(
            f"coordinates in {files[0]} name volume {unknown[0]!r}, which training was not given "
            f"(given: {sorted(known)}); pass --volume {unknown[0]}:raw.h5:raw:labels.h5:stack"
        )
    reader = PatchReader(volumes, model_params)
    reader.check_centers(records)
    train_dir = Path(train_dir)
    train_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_checkpoints(train_dir)  # left by a run killed while saving
    tf.random.set_seed(train_params.seed)
    if train_params.deterministic:
        # Deterministic kernels, and tf.data runs maps with random ops in order.
        tf.config.experimental.enable_op_determinism()
    with StopFlag() as stop:
        trainer = Trainer(model_params, train_params, train_dir, strategy=strategy, log=log)
        trainer.restore(train_params.init_checkpoint)
        gbs = train_params.batch_size * trainer.strategy.num_replicas_in_sync
        ds = make_dataset(files, reader, model_params, gbs, seed=train_params.seed + int(trainer.step.numpy()))
        try:
            return trainer.run(ds, stop)
        except tf.errors.OpError as exc:
            if "No space left on device" in str(exc):
                remove_partial_checkpoints(train_dir)
                raise HpcffnError(
                    f"no space left on the device of {train_dir} while saving a checkpoint: free space there and "
                    "run again (training continues from the last complete checkpoint)") from None
            if reader.failure is not None:  # our own error, raised inside the data pipeline
                raise HpcffnError(f"training input failed: {str(reader.failure)[:300]}") from reader.failure
            msg = op_error_lines(exc)
            hint = next((m for m in msg if "coordinate" in m), msg[0] if msg else "")
            raise HpcffnError(f"training input failed: {hint[:300]}") from None
