"""Tiling and grouping: exact cover, edge merging, overlap boxes, balanced deterministic groups."""

from __future__ import annotations

import numpy as np
import pytest

from hpcffn.plan.grid import axis_spans, deal_groups, grow, tile_volume


@pytest.mark.parametrize("length,size,min_edge,expected", [
    (1500, 500, 65, [(0, 500), (500, 500), (1000, 500)]),
    (1234, 500, 65, [(0, 500), (500, 500), (1000, 234)]),  # remainder kept
    (1040, 500, 65, [(0, 500), (500, 540)]),  # 40 < 65: merged into the previous tile
    (300, 500, 65, [(0, 300)]),  # shorter than one tile
    (40, 500, 65, [(0, 40)]),  # nothing to merge into: kept
    (1065, 500, 65, [(0, 500), (500, 500), (1000, 65)]),  # exactly min_edge: kept
])
def test_axis_spans(length, size, min_edge, expected):
    assert axis_spans(length, size, min_edge) == expected


@pytest.mark.parametrize("shape,size,min_edge", [
    ((37, 50, 23), (10, 10, 10), (4, 4, 4)),
    ((64, 129, 130), (64, 64, 64), (21, 21, 21)),
    ((5, 7, 3), (10, 10, 10), (1, 1, 1)),
    ((31, 31, 31), (7, 8, 9), (7, 8, 9)),
])
def test_tiles_cover_every_voxel_exactly_once(shape, size, min_edge):
    tiles = tile_volume("v", shape, size, min_edge, (3, 3, 3))
    count = np.zeros(shape, np.int32)
    for t in tiles:
        count[t.box.slices] += 1
    assert count.min() == 1 and count.max() == 1
    names = [t.name for t in tiles]
    assert len(set(names)) == len(names)
    for t in tiles:
        k, i, j = t.index
        assert t.name == f"v_z{k}_y{i}_x{j}"


def test_merged_edge_tiles_are_larger_not_smaller():
    tiles = tile_volume("v", (1040, 1000, 1000), (500, 500, 500), (65, 65, 65), (0, 0, 0))
    assert len(tiles) == 2 * 2 * 2
    assert max(t.box.size[0] for t in tiles) == 540
    assert min(min(t.box.size) for t in tiles) == 500


def test_infer_box_grows_by_overlap_and_is_clipped():
    shape = (100, 130, 70)
    tiles = tile_volume("v", shape, (64, 64, 64), (21, 21, 21), (8, 8, 8))
    first = tiles[0]
    assert first.infer_box.start == (0, 0, 0)
    assert first.infer_box.size == (72, 72, 70)  # low side clipped at 0, x is one merged tile
    for t in tiles:
        for s, n, bs, bn, d in zip(t.box.start, t.box.size, t.infer_box.start, t.infer_box.size, shape):
            assert bs == max(0, s - 8) and bs + bn == min(d, s + n + 8)
    assert grow((10, 10, 10), (5, 5, 5), (2, 2, 2), (100, 100, 100)).size == (9, 9, 9)


def test_ibex_grid_192_tiles_in_6_groups_of_32():
    tiles = tile_volume("microglia", (1500, 4000, 4000), (500, 500, 500), (81, 81, 81), (32, 32, 32))
    groups = deal_groups(tiles, 6)
    assert len(tiles) == 192
    assert [len(g.tiles) for g in groups] == [32] * 6
    assert len({g.voxels for g in groups}) == 1


def test_groups_balanced_by_voxels_and_deterministic():
    tiles = tile_volume("v", (1234, 777, 1501), (500, 500, 500), (65, 65, 65), (0, 0, 0))
    groups = deal_groups(tiles, 4)
    again = deal_groups(tile_volume("v", (1234, 777, 1501), (500, 500, 500), (65, 65, 65), (0, 0, 0)), 4)
    assert [g.model_dump() for g in groups] == [g.model_dump() for g in again]
    assignment = [name for g in groups for name in g.tiles]
    assert sorted(assignment) == sorted(t.name for t in tiles)  # every tile in exactly one group
    loads = [g.voxels for g in groups]
    assert sum(loads) == 1234 * 777 * 1501
    assert max(loads) - min(loads) <= max(t.box.voxels for t in tiles)
    assert all(t.group in {g.name for g in groups} for t in tiles)
    assert {t.name for t in tiles if t.group == "g1"} == set(groups[1].tiles)


def test_group_count_checked():
    tiles = tile_volume("v", (10, 10, 10), (5, 5, 5), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError):
        deal_groups(tiles, 9)


def test_tiles_built_without_validation_are_the_validated_models():
    """tile_volume skips pydantic's validation and defaults (`trusted`): the result must be what
    validating the same values gives, every field set, and the unit records json's own text."""
    import json

    from hpcffn.core.plan_model import TilePlan
    from hpcffn.core.units import tile_records

    tiles = tile_volume("vé\"ol", (37, 50, 23), (10, 10, 10), (4, 4, 4), (3, 3, 3))
    deal_groups(tiles[:7], 2)
    for t in tiles:
        again = TilePlan.model_validate(t.model_dump())
        assert again == t and t.model_fields_set == set(TilePlan.model_fields)
        assert type(t.index) is tuple and type(t.box.start) is tuple
    records = tile_records(tiles)
    assert list(records) == [t.name for t in tiles]
    for t in (tiles[0], tiles[6], tiles[-1]):  # a group and none, non-ASCII and quote in the name
        assert records[t.name] == json.dumps(t.model_dump(mode="json"), separators=(",", ":"))
        assert records[t.name].isascii()
