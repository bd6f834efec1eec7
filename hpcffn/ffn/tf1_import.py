"""Load weights into ConvStack3D from a checkpoint: ours (tf.train.Checkpoint) or Google's TF1 FFN.

A TF1 FFN convstack_3d checkpoint (e.g. the published FIB-25 model) stores
`seed_update/conv{i}_{a,b}/{weights,biases}`, `seed_update/conv_lom/...` and `global_step`;
its kernels are already z,y,x,in,out, the layout tf.nn.conv3d uses, so they copy over as they are.
"""

from __future__ import annotations

from pathlib import Path

from hpcffn.core.errors import HpcffnError

TF1_PROBE = "seed_update/conv0_a/weights"


def resolve_checkpoint(path: str | Path) -> str:
    """A checkpoint prefix from a pretrained model's name (fib25), a prefix, a `checkpoint` state
    file's directory or an index file."""
    import tensorflow as tf

    from hpcffn.core.pretrained import pretrained

    if (named := pretrained(path)) is not None:
        return named.path()
    p = Path(path)
    if p.is_dir():
        latest = tf.train.latest_checkpoint(str(p))
        if latest is None:
            raise HpcffnError(f"checkpoint directory {p} holds no checkpoint: train first or name a checkpoint prefix")
        return latest
    if p.suffix == ".index":
        p = p.with_suffix("")
    if not Path(str(p) + ".index").is_file():
        raise HpcffnError(
            f"no checkpoint at {p} (expected {p}.index): train first (hpcffn stage train), or give a checkpoint "
            "prefix such as train/g0/ckpt-100, its directory, or a pretrained model's name (fib25)"
        )
    return str(p)


def checkpoint_kind(prefix: str) -> str:
    """'tf1' for Google's FFN layout, 'hpcffn' for ours."""
    import tensorflow as tf

    names = {n for n, _ in tf.train.list_variables(prefix)}
    if TF1_PROBE in names:
        return "tf1"
    if any(n.startswith("model/weights/") for n in names):
        return "hpcffn"
    raise HpcffnError(
        f"checkpoint {prefix} is neither an hpcffn checkpoint nor a TF1 FFN convstack_3d checkpoint "
        f"(no {TF1_PROBE}); check the path"
    )


def load_tf1(model, prefix: str) -> int:
    """Copy a TF1 FFN convstack_3d checkpoint into `model`; returns its global_step (0 if absent)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    for name, var in model.tf1_variables().items():
        if name not in shapes:
            depth_found = sum(1 for n in shapes if n.endswith("_a/weights") and n.startswith("seed_update/conv"))
            raise HpcffnError(
                f"TF1 checkpoint {prefix} lacks {name}: it has depth {depth_found}, the spec asks for "
                f"depth {model.depth}; set ffn.model.depth (and features) to match the checkpoint"
            )
        if tuple(shapes[name]) != tuple(var.shape):
            raise HpcffnError(
                f"TF1 checkpoint {prefix}: {name} has shape {tuple(shapes[name])}, the model expects "
                f"{tuple(var.shape)}; set ffn.model.features/depth to match the checkpoint"
            )
        var.assign(tf.constant(reader.get_tensor(name), dtype=tf.float32))
    extra = [n for n in shapes if n.startswith("seed_update/conv") and n.endswith("/weights")
             and n not in model.tf1_variables()]
    if extra:
        raise HpcffnError(
            f"TF1 checkpoint {prefix} has more layers than depth {model.depth} ({extra[0]}): "
            "set ffn.model.depth to match the checkpoint"
        )
    return int(reader.get_tensor("global_step")) if "global_step" in shapes else 0


def load_weights(model, path: str | Path) -> int:
    """Load model weights only (for inference or fine-tuning); returns the checkpoint's step."""
    import tensorflow as tf

    prefix = resolve_checkpoint(path)
    try:
        kind = checkpoint_kind(prefix)
        if kind == "tf1":
            return load_tf1(model, prefix)
    except tf.errors.OpError as exc:  # DataLossError and friends: truncated or not a checkpoint
        raise HpcffnError(
            f"checkpoint {prefix} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}): it is "
            "truncated or damaged; give another checkpoint (e.g. an earlier ckpt-N of the train dir)"
        ) from None
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = tf.train.Checkpoint(model=model, step=step)
    try:
        ckpt.read(prefix).expect_partial().assert_existing_objects_matched()
    except tf.errors.DataLossError as exc:
        raise HpcffnError(f"checkpoint {prefix} cannot be read ({str(exc).splitlines()[0][:160]}): it is truncated "
                          "or damaged; give another checkpoint") from None
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as exc:
        raise HpcffnError(
            f"checkpoint {prefix} does not fit a depth-{model.depth}, {model.features}-feature model "
            f"({str(exc).splitlines()[0][:120]}); set ffn.model to the values it was trained with"
        ) from None
    return int(step.numpy())
