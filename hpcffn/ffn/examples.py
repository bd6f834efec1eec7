"""Training examples: coordinate TFRecords -> image/label patches -> augmented tf.data batches.

Each record (FFN's schema: `center` int64 [x, y, z] in the volume's full coordinates and
`label_volume_name` bytes) becomes a patch of FOV + 2*deltas voxels per axis around the centre,
enough for the step at the centre and the six moves of training. Labels become FFN's soft
targets (0.95 where the voxel has the centre's object id and that id is > 0, else 0.05); the
image is normalised as the model expects. Patches are read from HDF5 inside the tf.data graph
(numpy_function, parallel map, prefetch) so loading overlaps compute.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ModelParams
from hpcffn.io.volumes import Location, open_dataset, parse_location

# Volumes up to this size (bytes, raw + labels) are read into memory once instead of per patch.
PRELOAD_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class TrainingVolume:
    """A labelled volume training reads: its name in the coordinate records and two locations."""

    name: str
    raw: Location
    labels: Location


def parse_volume_arg(text: str) -> TrainingVolume:
    """`name:raw.h5:raw:labels.h5:stack` (datasets optional: `name:raw.h5:labels.h5`)."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise HpcffnError(
            f"--volume {text!r}: write it as name:raw.h5:raw:labels.h5:stack (name = label_volume_name in the coordinates)"
        )
    parts = rest.split(":")
    h5 = [i for i, p in enumerate(parts) if p.lower().endswith((".h5", ".hdf5", ".hdf", ".he5"))]
    if len(h5) != 2:
        raise HpcffnError(
            f"--volume {text!r}: expected two HDF5 files (raw and labels), as name:raw.h5:raw:labels.h5:stack"
        )
    raw_text = ":".join(parts[h5[0]:h5[1]])
    lab_text = ":".join(parts[h5[1]:])
    return TrainingVolume(name, parse_location(raw_text, "raw"), parse_location(lab_text, "stack"))


class PatchReader:
    """Cuts (image, label) patches from HDF5 volumes; zero-pads labels and mean-pads images at borders."""

    def __init__(self, volumes: list[TrainingVolume], params: ModelParams, preload_bytes: int = PRELOAD_BYTES):
        self.params = params
        self.volumes = {v.name: v for v in volumes}
        self._cache: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._preload_bytes = preload_bytes
        # The first HpcffnError raised while TensorFlow's data pipeline called this reader:
        # TensorFlow hands it on only as text inside an OpError, so training reads it here.
        self.failure: HpcffnError | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        for v in volumes:
            with open_dataset(v.raw) as r, open_dataset(v.labels) as lab:
                if r.ndim != 3 or tuple(r.shape) != tuple(lab.shape):
                    raise HpcffnError(
                        f"volume {v.name}: raw {v.raw} has shape {r.shape} but labels {v.labels} have "
                        f"{lab.shape}; they must be the same 3-D z,y,x shape"
                    )
                self.shapes[v.name] = tuple(int(n) for n in r.shape)

    def check_centers(self, records) -> None:
        """(x,y,z centre, name) records must lie inside their volume: checked before TensorFlow runs,
        whose data pipeline would report a bad one with tracebacks."""
        for (x, y, z), name in records:
            shape = self.shapes.get(name)
            if shape is not None and not all(0 <= c < n for c, n in zip((z, y, x), shape)):
                raise HpcffnError(
                    f"a coordinate record's centre x,y,z {(x, y, z)} lies outside volume {name} "
                    f"(z,y,x shape {shape}): the records were made for other files (e.g. sub-volume "
                    "files or another offset); pass the volumes they were built from"
                )

    def _arrays(self, name: str):
        with self._lock:
            if name in self._cache:
                return self._cache[name]
            v = self.volumes.get(name)
            if v is None:
                raise HpcffnError(
                    f"coordinates name volume {name!r} but training was given {sorted(self.volumes)}; "
                    "pass --volume NAME:raw.h5:raw:labels.h5:stack for it"
                )
            import h5py

            fr, fl = h5py.File(v.raw.path, "r"), h5py.File(v.labels.path, "r")
            raw, lab = fr[v.raw.dataset], fl[v.labels.dataset]
            if raw.size * (raw.dtype.itemsize + lab.dtype.itemsize) <= self._preload_bytes:
                raw, lab = raw[...], lab[...]
                fr.close()
                fl.close()
            self._cache[name] = (raw, lab)
            return self._cache[name]

    def patch(self, name: str, center_zyx, size_zyx) -> tuple[np.ndarray, np.ndarray]:
        """Raw (uint8-like) and label patches of `size_zyx` centred on `center_zyx`."""
        raw, lab = self._arrays(name)
        shape = raw.shape
        start = [int(c) - s // 2 for c, s in zip(center_zyx, size_zyx)]
        lo = [max(0, a) for a in start]
        hi = [min(d, a + s) for a, s, d in zip(start, size_zyx, shape)]
        if any(h <= lo_ for lo_, h in zip(lo, hi)):
            raise HpcffnError(f"volume {name}: coordinate z,y,x {tuple(center_zyx)} lies outside its shape {shape}")
        sel = tuple(slice(a, b) for a, b in zip(lo, hi))
        with self._lock:  # h5py handles are shared between the parallel map's threads
            r = np.asarray(raw[sel])
            lb = np.asarray(lab[sel])
        pad = [(a - s, s + n - b) for a, b, s, n in zip(lo, hi, start, size_zyx)]
        if any(p != (0, 0) for p in pad):
            r = np.pad(r.astype(np.float32), pad, constant_values=self.params.image_mean)
            lb = np.pad(lb, pad, constant_values=0)
        return r, lb

    def example(self, center_xyz, name: bytes, size_zyx) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image and soft labels (float32, z,y,x) for one coordinate record."""
        vol = name.decode() if isinstance(name, bytes) else str(name)
        center = (int(center_xyz[2]), int(center_xyz[1]), int(center_xyz[0]))
        r, lb = self.patch(vol, center, size_zyx)
        image = (r.astype(np.float32) - self.params.image_mean) / self.params.image_stddev
        return image.astype(np.float32), soft_labels(lb)


def soft_labels(labels: np.ndarray) -> np.ndarray:
    """FFN's targets: 0.95 on the centre voxel's object (if its id > 0), 0.05 elsewhere."""
    center = labels[tuple(s // 2 for s in labels.shape)]
    mask = (labels == center) if center > 0 else np.zeros(labels.shape, bool)
    return np.where(mask, np.float32(0.95), np.float32(0.05)).astype(np.float32)


def coordinate_files(paths) -> list[str]:
    """Check coordinate files exist; directories expand to their *.tfrecord* files."""
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if ".tfrecord" in f.name)
            if not found:
                raise HpcffnError(f"coordinate directory {p} holds no *.tfrecord* files: run the coordinates stage first")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise HpcffnError(f"coordinate file {p} does not exist: run the coordinates stage first or fix the path")
    if not out:
        raise HpcffnError("no coordinate files given: pass --coordinates FILE (GZIP TFRecord from the coordinates stage)")
    return out


def _parse_record(serialized):
    import tensorflow as tf

    feats = tf.io.parse_single_example(
        serialized,
        {
            "center": tf.io.FixedLenFeature([3], tf.int64),
            "label_volume_name": tf.io.FixedLenFeature([], tf.string),
        },
    )
    return feats["center"], feats["label_volume_name"]


def op_error_lines(exc) -> list[str]:
    """A TensorFlow OpError's message lines without the `{{function_node ...}}` prefixes (noise to a user)."""
    import re

    lines = (re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip() for line in str(exc.message).splitlines())
    return [line for line in lines if line]


def peek_records(files: list[str], n: int = 1000) -> list[tuple[tuple[int, int, int], str]]:
    """The first `n` records (x,y,z centre, name): early, readable checks of the inputs."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP").take(n).map(_parse_record)
    try:
        return [(tuple(int(v) for v in c.numpy()), nm.numpy().decode()) for c, nm in ds]
    except tf.errors.OpError as exc:
        raise HpcffnError(
            f"cannot read coordinate records from {files[0]}...: {(op_error_lines(exc) or [''])[0][:160]} "
            "(expected GZIP TFRecords with `center` int64[3] and `label_volume_name`)"
        ) from None


def patch_size(params: ModelParams) -> tuple[int, int, int]:
    """FOV plus one move each way, z,y,x."""
    from hpcffn.ffn.model import deltas_zyx, fov_zyx

    return tuple(f + 2 * d for f, d in zip(fov_zyx(params), deltas_zyx(params)))  # type: ignore[return-value]


def augment(image, labels, seed=None):
    """Same random y/x transposition (square y,x only) and z/y/x reflections for image and labels."""
    import tensorflow as tf

    both = tf.stack([image, labels], axis=-1)  # z,y,x,2
    flips = tf.random.uniform([3], 0, 2, dtype=tf.int32, seed=seed)
    for axis in range(3):
        both = tf.cond(flips[axis] > 0, lambda b=both, a=axis: tf.reverse(b, [a]), lambda b=both: b)
    if both.shape[1] == both.shape[2]:
        swap = tf.random.uniform([], 0, 2, dtype=tf.int32, seed=seed)
        both = tf.cond(swap > 0, lambda: tf.transpose(both, [0, 2, 1, 3]), lambda: both)
    return both[..., 0], both[..., 1]


def make_dataset(files: list[str], reader: PatchReader, params: ModelParams, batch_size: int,
                 seed: int = 0, shuffle_buffer: int = 2048, augmentation: bool = True):
    """Endless, shuffled, augmented batches: image and labels [batch, z, y, x, 1] float32."""
    import tensorflow as tf

    size = patch_size(params)

    def load(center, name):
        try:
            return reader.example(center, name, size)
        except HpcffnError as exc:
            reader.failure = reader.failure or exc
            raise

    def tf_load(center, name):
        image, labels = tf.numpy_function(load, [center, name], [tf.float32, tf.float32], stateful=False)
        image.set_shape(size)
        labels.set_shape(size)
        return image, labels

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                       cycle_length=min(4, len(files)), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(shuffle_buffer, seed=seed).map(_parse_record, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE)
    if augmentation:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda i, lab: (i[..., None], lab[..., None]))
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
