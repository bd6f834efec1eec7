"""The z-slices the report draws: raw, groundtruth, a tile's segmentation, a stitched volume.

Every read goes through these functions; `stitched_slice` reads the OME-Zarr volume of the
planned stitch, or the HDF5 of a single-task `hpcffn stage stitch`.
"""

from __future__ import annotations

import numpy as np

from hpcffn.core.plan_model import Plan, TilePlan
from hpcffn.io.volumes import Location, open_dataset, parse_location


def _slice(loc: Location | str, z: int, y: slice, x: slice, default: str) -> np.ndarray:
    with open_dataset(loc, default) as ds:
        return np.asarray(ds[z, y, x])


def volume_slice(location: str, z: int, y: slice = slice(None), x: slice = slice(None),
                 default: str = "raw") -> np.ndarray:
    """One z-slice (optionally cropped) of a plan volume's raw or groundtruth ("path.h5:dataset")."""
    return _slice(parse_location(location, default), z, y, x, default)


def tile_candidates(tile: TilePlan) -> list[int]:
    """The z-slices the report may show for a tile: at a quarter, half and three quarters of the
    box it owns (it shows the one with the most segments, reading three slices, not the tile)."""
    z0, n = tile.box.start[0], tile.box.size[0]
    return list(dict.fromkeys(z0 + (n * k) // 4 for k in (2, 1, 3)))


def tile_segmentation_slice(plan: Plan, tile: TilePlan, z: int, stage: str = "consensus") -> np.ndarray | None:
    """The tile's segmentation at volume z, cropped to the box the tile owns; None before infer.

    `stage` infer or reverse: that inference pass's own output (plans with consensus)."""
    path = plan.infer_output(stage, tile.name)
    if not path.is_file():
        return None
    start, size = tile.infer_box.start, tile.box.size
    inner = [b - i for b, i in zip(tile.box.start, start)]
    return _slice(Location(path, "seg"), z - start[0], slice(inner[1], inner[1] + size[1]),
                  slice(inner[2], inner[2] + size[2]), "seg")


def stitched_slice(plan: Plan, volume: str, z: int) -> np.ndarray | None:
    """A volume's stitched segmentation at z (whole y,x plane); None before stitch."""
    path = plan.layout.stitched(volume)  # the OME-Zarr volume of the planned stitch
    if not path.is_dir():
        path = plan.layout.stitched_hdf5(volume)  # or a single-task stitch's HDF5
        if not path.is_file():
            return None
    return _slice(Location(path, "seg"), z, slice(None), slice(None), "seg")
