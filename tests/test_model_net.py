"""convstack_3d: shapes, residual structure, checkpoint round-trip, TF1 FFN checkpoint import."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.tf

tf = pytest.importorskip("tensorflow")

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ModelParams
from hpcffn.ffn.model import build_model, layer_names
from hpcffn.ffn.tf1_import import checkpoint_kind, load_weights

SMALL = ModelParams(depth=2, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2))


def _inputs(n=2, shape=(9, 9, 9), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape, 2)).astype(np.float32)
    return x


def test_output_shape_is_fov_with_one_channel():
    model = build_model(SMALL, seed=1)
    out = model(_inputs(3))
    assert out.shape == (3, 9, 9, 9, 1)
    # Non-cubic FOVs keep their z,y,x shape too.
    assert model(_inputs(1, (5, 7, 9))).shape == (1, 5, 7, 9, 1)


def test_variables_have_ffn_names_and_shapes():
    model = build_model(ModelParams(depth=3, features=32), seed=0)
    names = model.tf1_variables()
    assert layer_names(3) == ["conv0_a", "conv0_b", "conv1_a", "conv1_b", "conv2_a", "conv2_b", "conv_lom"]
    assert tuple(names["seed_update/conv0_a/weights"].shape) == (3, 3, 3, 2, 32)
    assert tuple(names["seed_update/conv0_a/biases"].shape) == (32,)
    assert tuple(names["seed_update/conv2_b/weights"].shape) == (3, 3, 3, 32, 32)
    assert tuple(names["seed_update/conv_lom/weights"].shape) == (1, 1, 1, 32, 1)
    assert tuple(names["seed_update/conv_lom/biases"].shape) == (1,)
    assert len(names) == 2 * (2 * 3 + 1)


def test_output_is_seed_plus_update():
    model = build_model(SMALL, seed=2)
    x = _inputs(2)
    # A zero final layer means no update: the logits are exactly the input seed.
    model.weights["conv_lom"].assign(tf.zeros_like(model.weights["conv_lom"]))
    model.biases["conv_lom"].assign([0.0])
    np.testing.assert_array_equal(model(x).numpy()[..., 0], x[..., 1])
    model.biases["conv_lom"].assign([1.5])
    np.testing.assert_allclose(model(x).numpy()[..., 0], x[..., 1] + 1.5, rtol=0, atol=1e-6)
    # With a real final layer the update depends on the image channel.
    m2 = build_model(SMALL, seed=3)
    x2 = x.copy()
    x2[..., 0] += 1.0
    assert not np.allclose(m2.update(x).numpy(), m2.update(x2).numpy())
    np.testing.assert_allclose(m2(x).numpy(), x[..., 1:2] + m2.update(x).numpy(), atol=1e-6)


def test_residual_module_adds_its_input():
    """Depth 2 = conv0 pair + one residual module; zeroing the module's conv b leaves the identity."""
    model = build_model(SMALL, seed=4)
    x = _inputs(1)
    for name in ("conv1_b",):
        model.weights[name].assign(tf.zeros_like(model.weights[name]))
        model.biases[name].assign(tf.zeros_like(model.biases[name]))
    # Same network without the residual module: conv0_a -> conv0_b -> relu -> conv_lom.
    m1 = build_model(ModelParams(depth=1, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2)), seed=99)
    for name in ("conv0_a", "conv0_b", "conv_lom"):
        m1.weights[name].assign(model.weights[name])
        m1.biases[name].assign(model.biases[name])
    np.testing.assert_allclose(model(x).numpy(), m1(x).numpy(), atol=1e-5)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = build_model(SMALL, seed=5)
    step = tf.Variable(42, dtype=tf.int64)
    prefix = tf.train.Checkpoint(model=model, step=step).save(str(tmp_path / "ckpt"))
    other = build_model(SMALL, seed=6)
    x = _inputs(2, seed=1)
    assert not np.array_equal(model(x).numpy(), other(x).numpy())
    assert checkpoint_kind(prefix) == "hpcffn"
    assert load_weights(other, tmp_path) == 42  # a directory resolves to its latest checkpoint
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())


def test_checkpoint_of_another_depth_is_a_user_error(tmp_path):
    model = build_model(SMALL, seed=5)
    tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    deeper = build_model(ModelParams(depth=3, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2)))
    with pytest.raises(HpcffnError, match="depth-3"):
        load_weights(deeper, tmp_path)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(HpcffnError, match="holds no checkpoint"):
        load_weights(build_model(SMALL), tmp_path)
    with pytest.raises(HpcffnError, match="no checkpoint at"):
        load_weights(build_model(SMALL), tmp_path / "ckpt-7")


def _write_tf1_checkpoint(prefix, depth, features, x, global_step=1234):
    """Build FFN's convstack_3d as a TF1 graph (variables under seed_update/), save it, return logits."""
    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        inp = tf.compat.v1.placeholder(tf.float32, [None, *x.shape[1:]])

        def conv(net, name, cin, cout, k=3):
            with tf.compat.v1.variable_scope(name):
                w = tf.compat.v1.get_variable(
                    "weights", initializer=rng.normal(0, 0.1, (k, k, k, cin, cout)).astype(np.float32))
                b = tf.compat.v1.get_variable("biases", initializer=rng.normal(0, 0.1, (cout,)).astype(np.float32))
            return tf.nn.bias_add(tf.nn.conv3d(net, w, [1, 1, 1, 1, 1], "SAME"), b)  # as FFN's conv layers

        with tf.compat.v1.variable_scope("seed_update"):
            net = tf.nn.relu(conv(inp, "conv0_a", 2, features))
            net = conv(net, "conv0_b", features, features)
            for i in range(1, depth):
                res = net
                net = tf.nn.relu(net)
                net = tf.nn.relu(conv(net, f"conv{i}_a", features, features))
                net = conv(net, f"conv{i}_b", features, features) + res
            update = conv(tf.nn.relu(net), "conv_lom", features, 1, k=1)
        logits = inp[..., 1:2] + update
        gs = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(gs.assign(global_step))
            out = sess.run(logits, {inp: x})
            saver.save(sess, str(prefix))
    return out


def test_tf1_ffn_checkpoint_imports_with_identical_logits(tmp_path):
    x = _inputs(2, (9, 9, 9), seed=3)
    expected = _write_tf1_checkpoint(tmp_path / "model.ckpt-1234", depth=3, features=8, x=x)
    names = {n for n, _ in tf.train.list_variables(str(tmp_path / "model.ckpt-1234"))}
    assert {"seed_update/conv0_a/weights", "seed_update/conv2_b/biases", "seed_update/conv_lom/weights",
            "global_step"} <= names
    model = build_model(ModelParams(depth=3, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2)), seed=0)
    assert checkpoint_kind(str(tmp_path / "model.ckpt-1234")) == "tf1"
    assert load_weights(model, tmp_path / "model.ckpt-1234.index") == 1234
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_tf1_checkpoint_of_another_depth_names_the_fix(tmp_path):
    x = _inputs(1, (9, 9, 9))
    _write_tf1_checkpoint(tmp_path / "m.ckpt", depth=2, features=8, x=x)
    with pytest.raises(HpcffnError, match="ffn.model.depth"):
        load_weights(build_model(ModelParams(depth=3, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2))), tmp_path / "m.ckpt")
    with pytest.raises(HpcffnError, match="ffn.model.depth"):
        load_weights(build_model(ModelParams(depth=1, features=8, fov_size=(9, 9, 9), deltas=(2, 2, 2))), tmp_path / "m.ckpt")
    with pytest.raises(HpcffnError, match="features"):
        load_weights(build_model(ModelParams(depth=2, features=16, fov_size=(9, 9, 9), deltas=(2, 2, 2))), tmp_path / "m.ckpt")


def test_resuming_with_other_settings_is_a_user_error(tmp_path):
    from hpcffn.core.params import TrainingParams
    from hpcffn.ffn.training import Trainer

    Trainer(SMALL, TrainingParams(), tmp_path).save()
    with pytest.raises(HpcffnError, match="other model or optimizer settings"):
        Trainer(SMALL.model_copy(update={"features": 16}), TrainingParams(), tmp_path).restore(None)
    with pytest.raises(HpcffnError, match="other model or optimizer settings"):
        Trainer(SMALL, TrainingParams(optimizer="adam"), tmp_path).restore(None)
    same = Trainer(SMALL, TrainingParams(), tmp_path)
    same.restore(None)
    assert int(same.step.numpy()) == 0


def test_training_starts_from_a_tf1_checkpoint_when_the_train_dir_is_empty(tmp_path):
    from hpcffn.core.params import TrainingParams
    from hpcffn.ffn.training import Trainer

    x = _inputs(1, (9, 9, 9), seed=4)
    expected = _write_tf1_checkpoint(tmp_path / "ffn" / "model.ckpt-99", depth=2, features=8, x=x)
    trainer = Trainer(SMALL, TrainingParams(init_checkpoint=str(tmp_path / "ffn" / "model.ckpt-99")), tmp_path / "t")
    trainer.restore(trainer.tp.init_checkpoint)
    np.testing.assert_allclose(trainer.model(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert int(trainer.step.numpy()) == 0  # fine-tuning counts its own steps
