"""Helpers for the planning tests: small HDF5/TIF inputs and spec files in a temp folder."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import yaml

SHAPE = (100, 130, 70)  # z,y,x: not a multiple of the 64^3 tiles used below

BASE_SPEC = {
    "name": "exp",
    "workdir": "work",
    "volumes": [{"name": "v1", "raw": "data/v1.h5:raw", "groundtruth": "data/v1.h5:stack"}],
    "subvolume": {"size": [64, 64, 64], "overlap": [8, 8, 8], "groups": 2},
    "ffn": {
        "coordinates": {"margin": [6, 6, 6]},
        "model": {"depth": 2, "fov_size": [9, 9, 9], "deltas": [2, 2, 2]},
    },
    "cluster": {"profile": "local"},
    "container": {"runtime": "none"},
}


def write_h5(path: Path, shape=SHAPE, datasets=("raw", "stack")) -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name in datasets:
            data = np.zeros(shape, np.uint8)  # validate samples the data: give it a little content
            data[:, : shape[1] // 2] = 1 if name == "stack" else 200
            f.create_dataset(name, data=data)
    return path


def write_tif_dir(folder: Path, shape=SHAPE) -> Path:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    for z in range(shape[0]):
        tifffile.imwrite(folder / f"s{z}.tif", np.zeros(shape[1:], np.uint8))
    return folder


def spec_dict(**changes) -> dict:
    """BASE_SPEC with top-level keys replaced (a value of None deletes the key)."""
    spec = copy.deepcopy(BASE_SPEC)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def write_spec(folder: Path, spec: dict | None = None, data: bool = True, name: str = "exp.yaml") -> Path:
    """Write a spec (default BASE_SPEC) and, when data, its HDF5 input beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    if data:
        write_h5(folder / "data" / "v1.h5")
    path = folder / name
    path.write_text(yaml.safe_dump(spec if spec is not None else spec_dict(), sort_keys=False))
    return path
