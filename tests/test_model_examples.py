"""Training examples: record parsing, patch cutting (axis order, borders), soft labels, augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ModelParams
from hpcffn.ffn import synthetic
from hpcffn.ffn.examples import (
    PatchReader,
    TrainingVolume,
    parse_volume_arg,
    soft_labels,
)
from hpcffn.io.volumes import parse_location

MP = ModelParams(depth=2, fov_size=(5, 5, 5), deltas=(1, 1, 1), image_mean=100.0, image_stddev=10.0)


def _volume(tmp_path, shape=(12, 14, 16)):
    raw = (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)
    labels = np.zeros(shape, np.uint64)
    labels[:, :, 8:] = 5
    labels[:6, :7, :8] = 3
    synthetic.write_volume(tmp_path / "v.h5", raw, labels)
    vol = TrainingVolume("v", parse_location(f"{tmp_path}/v.h5:raw"), parse_location(f"{tmp_path}/v.h5:stack"))
    return raw, labels, vol


def test_parse_volume_arg_forms_and_errors(tmp_path):
    v = parse_volume_arg("cells:/d/a.h5:raw:/d/b.h5:stack")
    assert (v.name, str(v.raw), str(v.labels)) == ("cells", "/d/a.h5:raw", "/d/b.h5:stack")
    v = parse_volume_arg("cells:/d/a.h5:/d/a.h5")
    assert (v.raw.dataset, v.labels.dataset) == ("raw", "stack")
    for bad in ("cells", "cells:/d/a.h5:raw", ":/a.h5:/b.h5"):
        with pytest.raises(HpcffnError, match="--volume"):
            parse_volume_arg(bad)


def test_soft_labels_follow_the_centre_object():
    lab = np.zeros((3, 3, 3), np.uint64)
    lab[1, 1, 1] = lab[0, 0, 0] = 7
    lab[2, 2, 2] = 8
    soft = soft_labels(lab)
    assert soft[1, 1, 1] == pytest.approx(0.95) and soft[0, 0, 0] == pytest.approx(0.95)
    assert soft[2, 2, 2] == pytest.approx(0.05) and soft[0, 1, 2] == pytest.approx(0.05)
    lab[1, 1, 1] = 0  # background centre: nothing to fill
    assert np.all(soft_labels(lab) == np.float32(0.05))


def test_patch_uses_xyz_centres_and_pads_at_borders(tmp_path):
    raw, labels, vol = _volume(tmp_path)
    reader = PatchReader([vol], MP)
    # center x=10, y=3, z=2 -> z,y,x (2, 3, 10)
    image, soft = reader.example(np.array([10, 3, 2]), b"v", (7, 7, 7))
    expect = (raw[0:6, 0:7, 7:14].astype(np.float32) - 100.0) / 10.0
    np.testing.assert_allclose(image[1:7, 0:7, :], expect)
    assert np.all(image[0] == 0.0)  # padded with the image mean -> 0 after normalisation
    assert soft[3, 3, 3] == pytest.approx(0.95)  # label 5 at the centre
    np.testing.assert_array_equal(soft[1:, :, 1:] > 0.5, labels[0:6, 0:7, 8:14] == 5)
    assert not np.any(soft[:, :, 0] > 0.5)  # x=7 is object 3 / background, not 5
    with pytest.raises(HpcffnError, match="outside"):
        reader.example(np.array([100, 3, 2]), b"v", (7, 7, 7))
    with pytest.raises(HpcffnError, match="'w'"):
        reader.example(np.array([1, 1, 1]), b"w", (7, 7, 7))


def test_mismatched_raw_and_labels_shapes_are_refused(tmp_path):
    synthetic.write_volume(tmp_path / "a.h5", np.zeros((4, 4, 4), np.uint8))
    synthetic.write_volume(tmp_path / "b.h5", np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4, 5), np.uint64))
    vol = TrainingVolume("v", parse_location(f"{tmp_path}/a.h5:raw"), parse_location(f"{tmp_path}/b.h5:stack"))
    with pytest.raises(HpcffnError, match="same 3-D"):
        PatchReader([vol], MP)


@pytest.mark.tf
def test_dataset_batches_and_augmentation_keeps_image_and_labels_aligned(tmp_path):
    pytest.importorskip("tensorflow")
    from hpcffn.ffn.examples import augment, make_dataset, peek_records

    raw, labels = synthetic.balls_volume((24, 24, 24), radius=(3, 5), seed=3)
    synthetic.write_volume(tmp_path / "b.h5", raw, labels)
    centers = synthetic.sample_centers(labels, 40, (4, 4, 4), seed=1)
    synthetic.write_coordinates(tmp_path / "c.tfrecord.gz", centers, "b")
    recs = peek_records([str(tmp_path / "c.tfrecord.gz")], 5)
    z, y, x = centers[0]
    assert recs[0] == ((int(x), int(y), int(z)), "b")
    vol = TrainingVolume("b", parse_location(f"{tmp_path}/b.h5:raw"), parse_location(f"{tmp_path}/b.h5:stack"))
    mp = ModelParams(depth=2, fov_size=(9, 9, 9), deltas=(2, 2, 2))
    ds = make_dataset([str(tmp_path / "c.tfrecord.gz")], PatchReader([vol], mp), mp, batch_size=3, seed=0)
    for image, soft in ds.take(4):
        assert image.shape == (3, 13, 13, 13, 1) and soft.shape == (3, 13, 13, 13, 1)
        # Augmented or not, the centre voxel keeps its own target and bright voxels are the objects.
        s, im = soft.numpy()[..., 0], image.numpy()[..., 0]
        for b in range(3):
            if s[b, 6, 6, 6] > 0.5:
                assert np.mean(im[b][s[b] > 0.5] > 0) > 0.9
    # augment transforms image and labels identically: labels computed from the image stay so.
    img = np.random.default_rng(0).normal(size=(7, 7, 7)).astype(np.float32)
    seen = set()
    for _ in range(30):
        a, b = augment(img, (img > 0).astype(np.float32))
        np.testing.assert_array_equal(b.numpy(), (a.numpy() > 0).astype(np.float32))
        seen.add(a.numpy().tobytes())
    assert len(seen) > 4  # flips and transposition actually happen


@pytest.mark.tf
def test_unreadable_coordinates_are_one_clean_line(tmp_path):
    pytest.importorskip("tensorflow")
    from hpcffn.ffn.examples import peek_records

    (tmp_path / "c.tfrecord.gz").write_bytes(b"not gzip at all")
    with pytest.raises(HpcffnError, match="cannot read coordinate records") as err:
        peek_records([str(tmp_path / "c.tfrecord.gz")])
    # TensorFlow prefixes its messages with {{function_node ...}}: not for users' eyes.
    assert "{{" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.tf
def test_records_outside_the_volume_stop_training_with_one_line(tmp_path):
    """Records made for other files (sub-volume files, another offset) fail before TensorFlow's
    data pipeline, which would print a Python traceback per bad record."""
    import os
    import subprocess
    import sys

    pytest.importorskip("tensorflow")
    synthetic.write_volume(tmp_path / "v.h5", np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint64))
    synthetic.write_coordinates(tmp_path / "c.tfrecord.gz", np.array([[2, 3, 4], [20, 3, 4]]), "v")
    out = subprocess.run(
        [sys.executable, "-m", "hpcffn.cli", "stage", "train", "--coordinates", str(tmp_path / "c.tfrecord.gz"),
         "--volume", f"v:{tmp_path}/v.h5:raw:{tmp_path}/v.h5:stack", "--train-dir", str(tmp_path / "t"),
         "--depth", "1", "--features", "2", "--fov-size", "5,5,5", "--deltas", "1,1,1", "--max-steps", "2"],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "x,y,z (4, 3, 20) lies outside volume v" in out.stderr
    # Nothing but the unit lock (hpcffn/core/locks.py): no checkpoint, no event file.
    assert not (tmp_path / "t").exists() or [p.name for p in (tmp_path / "t").iterdir()] == [".hpcffn.lock"]


@pytest.mark.tf
def test_a_bad_record_past_the_early_check_fails_training_with_our_error(tmp_path):
    """Records past the ones checked before TensorFlow runs fail inside its data pipeline: the
    reader's own error comes back by type (kept as the cause), not fished out of TF's text."""
    pytest.importorskip("tensorflow")
    from hpcffn.core.params import TrainingParams
    from hpcffn.ffn.training import train

    synthetic.write_volume(tmp_path / "v.h5", np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint64))
    synthetic.write_coordinates(tmp_path / "c.tfrecord.gz", np.array([[2, 3, 4]] * 1000 + [[20, 3, 4]] * 1000), "v")
    vol = TrainingVolume("v", parse_location(f"{tmp_path}/v.h5:raw"), parse_location(f"{tmp_path}/v.h5:stack"))
    mp = ModelParams(depth=1, features=2, fov_size=(5, 5, 5), deltas=(1, 1, 1))
    with pytest.raises(HpcffnError) as err:
        train([str(tmp_path / "c.tfrecord.gz")], [vol], mp, TrainingParams(max_steps=50), tmp_path / "t",
              log=lambda s: None)
    assert str(err.value) == ("training input failed: volume v: coordinate z,y,x (20, 3, 4) lies outside "
                              "its shape (8, 8, 8)")
    assert isinstance(err.value.__cause__, HpcffnError)
