"""Stitch step 2 (one small task per volume): every tile's joins -> one global relabelling.

Reads only the joins files (never a voxel): tile i's ids get the range after tile i-1's, the
agreeing pairs become edges, connected components (union-find) merge them, and the objects that
own voxels (a tile's own ids in its core, and the neighbours' ids that fill its gaps) are
numbered 1..K exactly as the single-task stitch numbers them (stitch.global_ids), so both give
the same ids. Writes

    stitch/<volume>.lut.npy      final id of every offset tile id (smallest unsigned dtype)
    stitch/<volume>.tiles.json   per tile: [id base, largest id], for each relabel task's slice
    stitch/<volume>.ome.zarr/    the empty store (io/ome_zarr.py), labels dtype from K

Memory: the id tables (8 bytes per tile id), independent of voxels.
"""

from __future__ import annotations

import json

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.io import ome_zarr
from hpcffn.stages.stitch import global_ids


def load_joins(path, tile: str, plan_file) -> dict:
    if not path.is_file():
        raise HpcffnError(f"tile {tile} has no joins ({path}): run its joins task first "
                          f"(`hpcffn submit --resume` or `hpcffn stage joins --plan {plan_file} --tile {tile}`)")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def resolve(names: list[str], joins: list[dict]) -> tuple[np.ndarray, list[int], int, int]:
    """(lut, id bases, segments K, joins) from the tiles' joins tables, in tile order."""
    index = {n: i for i, n in enumerate(names)}
    bases, used, top = [], [], 0
    for j in joins:
        bases.append(top)
        used.append(j["owned"].astype(np.uint64) + np.uint64(top))
        top += int(j["biggest"])

    def offset(ids, tiles, which) -> np.ndarray:
        """Neighbours' ids plus their tile's id base (`which`: each id's index in `tiles`, names)."""
        other = np.array([bases[index[str(n)]] for n in tiles], np.uint64)
        return ids.astype(np.uint64) + other[which.astype(np.int64)]

    edges = []
    for i, j in enumerate(joins):
        pairs = j["pairs"].astype(np.uint64)
        if len(pairs):
            edges.append(np.column_stack([pairs[:, 0] + np.uint64(bases[i]), offset(pairs[:, 1], j["neighbours"], pairs[:, 2])]))
        fills = j.get("fills")  # absent in joins files written before fill_gaps
        if fills is not None and len(fills):
            used.append(offset(fills[:, 1], j["fill_neighbours"], fills[:, 0]))
    lut, present = global_ids(top, edges, used)
    return lut, bases, len(present), int(sum(len(e) for e in edges))


def run_from_plan(plan: Plan, volume_key: str, log=print) -> dict:
    from hpcffn.core.atomic import atomic_path, atomic_write_text
    from hpcffn.io.volumes import open_dataset
    from hpcffn.stages.markers import hold_unit, mark_done

    volume = plan.volume(volume_key)
    tiles = [t for t in plan.tiles if t.volume == volume.name]
    store = plan.layout.stitched(volume.name)
    outputs = (plan.layout.relabelling(volume.name), plan.layout.id_bases(volume.name), store)
    # A killed resolve leaves `.NAME.xxxxxxxx.tmp*` of each output and the replaced store as
    # `.NAME.old-<pid>` (ome_zarr.create): removed here, under the unit's lock.
    with hold_unit(plan, "resolve", volume.name, outputs, extra_prefixes=(f".{store.name}.old-",)):
        joins = [load_joins(plan.layout.joins(t.name), t.name, plan.layout.plan) for t in tiles]
        lut, bases, segments, n_joins = resolve([t.name for t in tiles], joins)
        dtype = ome_zarr.label_dtype(segments)
        with atomic_path(plan.layout.relabelling(volume.name), suffix=".npy") as tmp:
            np.save(tmp, lut.astype(dtype))
        atomic_write_text(plan.layout.id_bases(volume.name), json.dumps(
            {t.name: [b, int(j["biggest"])] for t, b, j in zip(tiles, bases, joins)}) + "\n")
        with open_dataset(volume.raw, "raw") as raw:
            raw_type = np.dtype(raw.dtype)
        chunks = ome_zarr.chunk_shape(plan.spec.subvolume.size, volume.shape)
        ome_zarr.create(store, volume.shape, chunks, dtype, raw_type)
        log(f"hpcffn resolve: {volume.name}: {sum(len(j['owned']) for j in joins)} tile segments, {n_joins} joins "
            f"-> {segments} segments ({dtype}); store {plan.layout.stitched(volume.name)} chunks {chunks}")
        mark_done(plan, "resolve", volume.name, segments=segments, joins=n_joins)
    return {"volume": volume.name, "segments": segments, "joins": n_joins, "dtype": str(dtype)}
