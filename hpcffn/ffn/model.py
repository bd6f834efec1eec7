"""The convstack_3d network of FFN as a tf.Module with TF1-compatible variable names.

Variables are named exactly as Google's FFN names them under `seed_update/`
(`conv0_a/weights`, ..., `conv_lom/biases`) so a TF1 checkpoint maps onto this model by name
(see tf1_import.py) and our own checkpoints stay readable by the same rule.

Tensors are z,y,x: input [batch, z, y, x, 2] (channel 0 the normalised image, channel 1 the
seed logits), output [batch, z, y, x, 1] logits = input seed + predicted update.
"""

from __future__ import annotations

import math

import numpy as np

from hpcffn.core.params import ModelParams

LOGIT_095 = math.log(0.95 / 0.05)
LOGIT_005 = -LOGIT_095
# Logits written back into a canvas (training and inference) are clipped to +-logit(0.999):
# a model early in training adds a positive update on every visit, and hundreds of visits in
# inference would otherwise push the seed far outside anything it saw in training, where its
# updates stop meaning anything (and masks leak into the background).
CANVAS_LOGIT_LIMIT = math.log(0.999 / 0.001)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fov_zyx(params: ModelParams) -> tuple[int, int, int]:
    """FFN gives the FOV as x,y,z; arrays are z,y,x."""
    x, y, z = params.fov_size
    return (z, y, x)


def deltas_zyx(params: ModelParams) -> tuple[int, int, int]:
    x, y, z = params.deltas
    return (z, y, x)


def layer_names(depth: int) -> list[str]:
    """Convolution names in network order, as FFN's convstack_3d names them."""
    names = ["conv0_a", "conv0_b"]
    for i in range(1, depth):
        names += [f"conv{i}_a", f"conv{i}_b"]
    return names + ["conv_lom"]


def _make_convstack_class():
    import tensorflow as tf

    class ConvStack3D(tf.Module):
        """convstack_3d: conv0_a, conv0_b, depth-1 residual modules, 1x1x1 conv to logits."""

        def __init__(self, depth: int = 12, features: int = 32, seed: int | None = None,
                     compute_dtype: str = "float32"):
            super().__init__(name="seed_update")
            if depth < 1 or features < 1:
                raise ValueError("depth and features must be >= 1")
            self.depth = depth
            self.features = features
            self.compute_dtype = tf.as_dtype(compute_dtype)
            rng = np.random.default_rng(seed)
            self.weights: dict[str, tf.Variable] = {}
            self.biases: dict[str, tf.Variable] = {}
            with self.name_scope:
                for name in layer_names(depth):
                    if name == "conv_lom":
                        shape = (1, 1, 1, features, 1)
                    elif name == "conv0_a":
                        shape = (3, 3, 3, 2, features)
                    else:
                        shape = (3, 3, 3, features, features)
                    # Xavier/Glorot uniform, FFN's (slim's) default initialiser.
                    fan_in = int(np.prod(shape[:3])) * shape[3]
                    fan_out = int(np.prod(shape[:3])) * shape[4]
                    lim = math.sqrt(6.0 / (fan_in + fan_out))
                    w = rng.uniform(-lim, lim, size=shape).astype(np.float32)
                    self.weights[name] = tf.Variable(w, name=f"{name}/weights")
                    self.biases[name] = tf.Variable(tf.zeros(shape[-1]), name=f"{name}/biases")

        def tf1_variables(self) -> dict:
            """{TF1 checkpoint name: variable} for every model variable."""
            out = {}
            for name in layer_names(self.depth):
                out[f"seed_update/{name}/weights"] = self.weights[name]
                out[f"seed_update/{name}/biases"] = self.biases[name]
            return out

        def _conv(self, x, name):
            w = tf.cast(self.weights[name], self.compute_dtype)
            b = tf.cast(self.biases[name], self.compute_dtype)
            # BiasAdd, as FFN's conv layers: TensorFlow fuses conv + BiasAdd (+ ReLU) on CPU,
            # which is faster and gives FFN's graph's numbers.
            return tf.nn.bias_add(tf.nn.conv3d(x, w, strides=[1, 1, 1, 1, 1], padding="SAME"), b)

        def update(self, inputs):
            """The predicted change of the seed logits (before it is added to the seed)."""
            x = tf.cast(inputs, self.compute_dtype)
            net = tf.nn.relu(self._conv(x, "conv0_a"))
            net = self._conv(net, "conv0_b")
            for i in range(1, self.depth):
                module_in = net
                net = tf.nn.relu(net)
                net = tf.nn.relu(self._conv(net, f"conv{i}_a"))
                net = self._conv(net, f"conv{i}_b")
                net = net + module_in
            net = tf.nn.relu(net)
            return tf.cast(self._conv(net, "conv_lom"), tf.float32)

        def __call__(self, inputs):
            """Logits of the object mask: input seed logits (channel 1) + update."""
            inputs = tf.convert_to_tensor(inputs, tf.float32)
            return inputs[..., 1:2] + self.update(inputs)

    return ConvStack3D


_CLASS = None


def convstack_class():
    """The ConvStack3D class (built lazily so importing this module needs no TensorFlow)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_convstack_class()
    return _CLASS


def build_model(params: ModelParams, seed: int | None = None, mixed_precision: bool = False):
    """A ConvStack3D for `params`; mixed precision computes in float16 (GPU only)."""
    dtype = "float16" if mixed_precision else "float32"
    return convstack_class()(depth=params.depth, features=params.features, seed=seed, compute_dtype=dtype)


def normalize_image(image: np.ndarray, params: ModelParams) -> np.ndarray:
    """FFN's input normalisation: (image - mean) / stddev, as float32."""
    return ((image.astype(np.float32) - params.image_mean) / params.image_stddev).astype(np.float32)
