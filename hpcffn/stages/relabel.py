"""Stitch step 3 (array over tiles): write one tile's core, relabelled, into the OME-Zarr volume.

The tile's slice of the volume's lookup table (stitch/<volume>.lut.npy, memory-mapped, so only
this tile's ids are read) turns its ids into final ids; its core goes into level 0 of
labels/seg and the raw image of the same box into level 0 of the image. The voxels the tile
left unsegmented take the ids of the neighbours its joins file names as filling them
(fill_neighbours, those with fills), in plan order, each through its own slice of the table
(stitch.fill_gaps: the single task's rule). Cores start on chunk borders
(ome_zarr.chunk_shape), so no chunk is written by two tasks. Slabs are whole chunk layers of at
most SLAB_VOXELS, and a neighbour is read only where it meets the slab: memory stays below a tile's.
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.io import ome_zarr
from hpcffn.stages.stitch import SLAB_VOXELS, check_tile, fill_gaps, plan_tiles


def slab_depth(chunk_z: int, size) -> int:
    """z-slices per slab: whole chunk layers, about SLAB_VOXELS voxels (at least one layer)."""
    return chunk_z * max(1, SLAB_VOXELS // max(1, chunk_z * size[1] * size[2]))


def _final_ids(lut, base: int, biggest: int) -> np.ndarray:
    """ids[i]: the final id of a tile's id i (its slice of the memory-mapped lut; a copy)."""
    ids = np.array(lut[base:base + biggest + 1])
    ids[0] = 0  # lut[base] belongs to the tile before; background stays 0
    return ids


def _relabelled(ids: np.ndarray, block: np.ndarray, tile, volume: str) -> np.ndarray:
    if block.size and int(block.max()) >= len(ids):
        raise HpcffnError(f"{tile.location} holds id {int(block.max())} beyond the {len(ids) - 1} its joins task saw: "
                          f"it changed since; re-run joins and resolve for volume {volume}")
    return ids[block]


def _fillers(plan: Plan, me, volume, id_bases: dict, lut) -> list:
    """(tile, its ids -> final ids) of the neighbours that fill this tile's gaps, in plan order."""
    from hpcffn.stages.resolve import load_joins

    joins = load_joins(plan.layout.joins(me.name), me.name, plan.layout.plan)
    if "fills" not in joins:  # written before fill_gaps: resolve numbered no fills either
        return []
    names = {str(joins["fill_neighbours"][k]) for k in np.unique(joins["fills"][:, 0].astype(np.int64))}
    tiles = plan_tiles(plan, volume.name, names)
    for u in tiles:
        check_tile(u, volume.shape)
    return [(u, partial(_relabelled, _final_ids(lut, *id_bases[u.name]), tile=u, volume=volume.name)) for u in tiles]


def run_from_plan(plan: Plan, tile_key: str, log=print) -> dict:
    from hpcffn.io.volumes import open_dataset
    from hpcffn.stages.markers import hold_unit, mark_done

    me = plan.tile(tile_key)
    volume = plan.volume(me.volume)
    layout = plan.layout
    bases_file, lut_file = layout.id_bases(volume.name), layout.relabelling(volume.name)
    if not bases_file.is_file() or not lut_file.is_file():
        raise HpcffnError(f"volume {volume.name} has no relabelling ({lut_file}): run its resolve task first "
                          f"(`hpcffn submit --resume` or `hpcffn stage resolve --plan {layout.plan} --volume {volume.name}`)")
    id_bases = json.loads(bases_file.read_text())
    lut = np.load(lut_file, mmap_mode="r")
    ids = _final_ids(lut, *id_bases[me.name])
    with hold_unit(plan, "relabel", me.name):
        (tile,) = plan_tiles(plan, volume.name, {me.name})
        check_tile(tile, volume.shape)
        fillers = _fillers(plan, me, volume, id_bases, lut)
        seg = ome_zarr.open_array(layout.stitched(volume.name), "seg", mode="r+")
        img = ome_zarr.open_array(layout.stitched(volume.name), "raw", mode="r+")
        c, n = me.box.start, me.box.size
        ome_zarr.remove_partials(layout.stitched(volume.name), 0, c, n)  # a killed run's, of this core's chunks
        depth = slab_depth(seg.chunks[0], n)
        rel = [a - b for a, b in zip(c, me.infer_box.start)]
        with open_dataset(tile.location) as tile_seg, open_dataset(volume.raw, "raw") as raw:
            for z in range(0, n[0], depth):
                z1 = min(n[0], z + depth)
                block = tile_seg[rel[0] + z:rel[0] + z1, rel[1]:rel[1] + n[1], rel[2]:rel[2] + n[2]]
                labels = _relabelled(ids, block, tile, volume.name)
                fill_gaps(labels, (c[0] + z, c[1], c[2]), fillers)
                out = (slice(c[0] + z, c[0] + z1), slice(c[1], c[1] + n[1]), slice(c[2], c[2] + n[2]))
                seg[out] = labels
                img[out] = raw[out]
        log(f"hpcffn relabel: tile {me.name} -> {layout.stitched(volume.name)}")
        mark_done(plan, "relabel", me.name)
    return {"tile": me.name, "box": [list(c), list(n)]}
