"""Stitch step 1 (array over tiles): what one tile agrees on with its neighbours.

A tile reads its own segmentation once (its largest id, and the ids in the part it owns) and,
for each later neighbour in the plan's tile order, the region their infer boxes share, and
keeps the segment pairs that agree there under the same rule as the single-task stitch
(stitch.agreeing_pairs). Every pair of tiles is compared once, by the earlier tile. With
fill_gaps it also finds, for every neighbour (earlier and later) whose infer box reaches into
its core, which of that neighbour's ids fill the voxels it left unsegmented there
(stitch.gap_fill_ids): they own voxels, so resolve must number them. Memory: one tile's slabs
plus one shared region (smaller than a tile).

    stitch/joins/<tile>.npz   biggest (int), owned (ids), neighbours (names), pairs (k, 3):
                              this tile's id, the neighbour's id, the neighbour's index in neighbours;
                              fill_neighbours (names, plan order), fills (k, 2): the index in
                              fill_neighbours, that neighbour's id (empty without fill_gaps;
                              both absent in files written before it)
"""

from __future__ import annotations

import numpy as np

from hpcffn.core.params import StitchParams
from hpcffn.core.plan_model import Plan
from hpcffn.stages.resegment import judge_of
from hpcffn.stages.stitch import (
    check_tile,
    gap_fill_ids,
    meet,
    neighbour_pairs,
    plan_tiles,
    tile_ids,
)


def save_npz(path, **arrays) -> None:
    """np.savez_compressed written atomically (temp file + rename)."""
    from hpcffn.core.atomic import atomic_path

    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def run_from_plan(plan: Plan, tile_key: str, params: StitchParams | None = None, log=print) -> dict:
    from hpcffn.stages.markers import hold_unit, mark_done

    params = params or plan.ffn.stitch
    me = plan.tile(tile_key)
    volume = plan.volume(me.volume)
    later = [t.name for t in plan.tiles[plan.tiles.index(me) + 1:] if t.volume == me.volume
             and meet(me.infer_box.start, me.infer_box.size, t.infer_box.start, t.infer_box.size)]
    near = [t.name for t in plan.tiles if t.volume == me.volume and t.name != me.name and params.fill_gaps
            and meet(me.box.start, me.box.size, t.infer_box.start, t.infer_box.size)]
    with hold_unit(plan, "joins", me.name):
        tile, *others = plan_tiles(plan, volume.name, {me.name, *later})  # plan order: this tile first
        check_tile(tile, volume.shape)
        biggest, owned = tile_ids(tile)
        names, pairs = [], []
        judge = judge_of(plan, params, volume.name, log) if others else None
        for u in others:
            check_tile(u, volume.shape)
            found = neighbour_pairs(tile, u, params, judge)
            if found is None:
                continue
            pairs.append(np.column_stack([found, np.full(len(found), len(names), np.uint64)]))
            names.append(u.name)
        table = np.concatenate(pairs) if pairs else np.zeros((0, 3), np.uint64)
        fillers = plan_tiles(plan, volume.name, set(near))  # plan order
        for u in fillers:
            check_tile(u, volume.shape)
        fills = [np.column_stack([np.full(len(ids), k, np.uint64), ids])
                 for k, ids in enumerate(gap_fill_ids(tile, fillers))]
        fills = np.concatenate(fills) if fills else np.zeros((0, 2), np.uint64)
        save_npz(plan.layout.joins(me.name), biggest=np.int64(biggest), owned=owned,
                 neighbours=np.array(names, dtype=str), pairs=table.astype(np.uint64),
                 fill_neighbours=np.array([u.name for u in fillers], dtype=str), fills=fills.astype(np.uint64))
        log(f"hpcffn joins: tile {me.name}: {len(owned)} owned segments, {len(table)} joins with {len(names)} neighbours, "
            f"{len(fills)} neighbour segments fill its gaps")
        if judge is not None:
            log(f"hpcffn joins: tile {me.name}: resegment: {judge.summary()}")
        mark_done(plan, "joins", me.name, joins=len(table))
    return {"tile": me.name, "segments": len(owned), "joins": len(table), "neighbours": names}
