"""Seed origins of a segmentation (FFN's `origins`): where each segment's fill started.

FFN keeps, per segment id, the fill's start (z,y,x, in the segmented box's coordinates), the
number of FFN steps (FOV evaluations) the fill took and its wall time. A second inference pass
seeds at these positions in reverse order (`seed_policy: invert_origins`, FFN's
PolicyInvertOrigins), and consensus keeps them for the segments that survive.

Stored as one compound HDF5 dataset `origins` beside the segmentation (and in infer's resume
state): columns id, z, y, x, steps, seconds; rows in increasing id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcffn.core.errors import HpcffnError

DATASET = "origins"
DTYPE = np.dtype([("id", "<u8"), ("z", "<i8"), ("y", "<i8"), ("x", "<i8"), ("steps", "<i8"), ("seconds", "<f8")])


@dataclass(frozen=True)
class Origin:
    """One segment's fill: start (z,y,x in the box), FFN steps, wall seconds."""

    start: tuple[int, int, int]
    steps: int
    seconds: float


def to_array(origins: dict[int, Origin]) -> np.ndarray:
    """Origins as the stored table, sorted by id."""
    out = np.zeros(len(origins), DTYPE)
    for row, ident in zip(out, sorted(origins)):
        o = origins[ident]
        row["id"], (row["z"], row["y"], row["x"]), row["steps"], row["seconds"] = ident, o.start, o.steps, o.seconds
    return out


def from_array(table: np.ndarray) -> dict[int, Origin]:
    return {int(r["id"]): Origin((int(r["z"]), int(r["y"]), int(r["x"])), int(r["steps"]), float(r["seconds"]))
            for r in table}


def write(h5file, origins: dict[int, Origin]) -> None:
    """Add the `origins` dataset to an open, writable h5py file."""
    h5file.create_dataset(DATASET, data=to_array(origins))


def read(h5file) -> dict[int, Origin] | None:
    """The origins of an open h5py file, or None when it has none."""
    if DATASET not in h5file:
        return None
    return from_array(h5file[DATASET][...])


def load(path, box_shape=None) -> dict[int, Origin]:
    """Origins stored in the segmentation file `path`; a clear error when there are none or they
    belong to a box of another shape."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            origins = read(f)
            shape = f["seg"].shape if "seg" in f else None
    except OSError as exc:
        raise HpcffnError(f"cannot read origins from {path}: {exc}") from None
    if origins is None:
        raise HpcffnError(f"{path} has no `origins` dataset: give a segmentation written by `hpcffn stage infer` "
                          "(it records where each segment's fill started)")
    if box_shape is not None and shape is not None and tuple(shape) != tuple(box_shape):
        raise HpcffnError(f"{path}: its segmentation has shape {tuple(shape)}, the box to segment {tuple(box_shape)}; "
                          "give the origins of a segmentation of the same box")
    return origins


def inverted_seeds(origins: dict[int, Origin]) -> np.ndarray:
    """FFN's PolicyInvertOrigins: the starts of the segments, highest id (created last) first."""
    return np.array([origins[i].start for i in sorted(origins, reverse=True)], np.int64).reshape(-1, 3)
