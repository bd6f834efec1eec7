"""Stitch step 4 (one array per level): the OME-Zarr pyramid, level s made from level s-1.

A task owns one block of whole chunks of level s (ome_zarr.level_blocks: made from at most a
tile's worth of level s-1) and writes the labels by mode and the image by mean of each 2x2x2
cell; cells cut by the volume's far edge repeat their last voxel. The arrays of level s run
after those of level s-1 (afterok), so every task reads finished data, and no chunk has two
writers. Units are named <volume>_s<level>_b<block>.
"""

from __future__ import annotations

import re

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.io import ome_zarr

UNIT = re.compile(r"^(?P<volume>.+)_s(?P<level>[1-9]\d*)_b(?P<block>\d+)$")


def _cells(a: np.ndarray) -> np.ndarray:
    """(z, y, x) -> (z/2, y/2, x/2, 8): the 2x2x2 cells, odd edges padded with their last voxel."""
    a = np.pad(a, [(0, s % 2) for s in a.shape], mode="edge")
    z, y, x = (s // 2 for s in a.shape)
    return a.reshape(z, 2, y, 2, x, 2).transpose(0, 2, 4, 1, 3, 5).reshape(z, y, x, 8)


def mode_downsample(labels: np.ndarray) -> np.ndarray:
    """The most frequent id of every 2x2x2 cell (ties: the smallest id)."""
    cells = np.sort(_cells(labels), axis=-1)
    counts = (cells[..., :, None] == cells[..., None, :]).sum(-1)  # at most 8x8 per cell
    pick = np.argmax(counts, axis=-1)  # first of the sorted ids with the top count
    return np.take_along_axis(cells, pick[..., None], axis=-1)[..., 0]


def mean_downsample(image: np.ndarray) -> np.ndarray:
    """The rounded mean of every 2x2x2 cell, in the image's dtype."""
    mean = _cells(image).astype(np.float64).mean(-1)
    return np.rint(mean).astype(image.dtype) if image.dtype.kind in "ui" else mean.astype(image.dtype)


def block_of(plan: Plan, unit: str) -> tuple[str, int, tuple, tuple]:
    """(volume, level, start, size) of a pyramid unit name."""
    m = UNIT.match(unit)
    if not m:
        raise HpcffnError(f"{unit!r} is not a pyramid block name (<volume>_s<level>_b<block>); "
                          "pass a task index or a name from plan.json")
    volume = plan.volume(m["volume"])
    level, k = int(m["level"]), int(m["block"])
    levels = ome_zarr.pyramid_blocks(volume.shape, plan.spec.subvolume.size)
    blocks = levels[level - 1] if level <= len(levels) else []
    if k >= len(blocks):
        raise HpcffnError(f"pyramid block {unit} is not in volume {volume.name}'s pyramid: re-run `hpcffn plan`")
    return volume.name, level, *blocks[k]


def downsample_block(store, level: int, start, size) -> None:
    """Write level `level`'s box (start, size) of raw and labels from level - 1, a chunk layer at a time."""
    for image, method in (("raw", mean_downsample), (ome_zarr.LABELS, mode_downsample)):
        src = ome_zarr.open_array(store, ome_zarr.array_path(image, level - 1))
        dst = ome_zarr.open_array(store, ome_zarr.array_path(image, level), mode="r+")
        for z in range(start[0], start[0] + size[0], dst.chunks[0]):
            z1 = min(start[0] + size[0], z + dst.chunks[0])
            box = [(z, z1), *((s, s + n) for s, n in zip(start[1:], size[1:]))]
            part = src[tuple(slice(2 * a, min(2 * b, d)) for (a, b), d in zip(box, src.shape))]
            dst[tuple(slice(a, b) for a, b in box)] = method(part)


def run_from_plan(plan: Plan, unit: str, log=print) -> dict:
    from hpcffn.stages.markers import hold_unit, mark_done

    volume, level, start, size = block_of(plan, unit)
    store = plan.layout.stitched(volume)
    with hold_unit(plan, "pyramid", unit):
        ome_zarr.remove_partials(store, level, start, size)  # a killed run's, of this block's chunks
        downsample_block(store, level, start, size)
        log(f"hpcffn pyramid: {unit}: level {level} box {start} size {size}")
        mark_done(plan, "pyramid", unit)
    return {"unit": unit, "level": level, "start": list(start), "size": list(size)}

