"""Infer tasks of several tiles (`ffn.inference.tiles_per_task` K): a task's unit is a bundle.

An infer array with K > 1 runs ceil(tiles/K) tasks; task i segments the i-th run of K tiles of
its job (in plan order). Its unit is named `<first tile>+<n>`: the first tile and the n that
follow it in the job (a tile name never ends in `+<digits>`). Tiles keep their own outputs,
progress files and markers; the bundle's marker is written when all of its tiles are done,
so a finished task reads as done like any other.
"""

from __future__ import annotations

import re

_BUNDLE = re.compile(r"^(?P<first>.+)\+(?P<more>[0-9]+)$")


def bundle_name(tiles: list[str]) -> str:
    """The unit name of a task of `tiles` (one tile: its own name)."""
    return tiles[0] if len(tiles) == 1 else f"{tiles[0]}+{len(tiles) - 1}"


def bundles(tiles: list[str], k: int) -> list[list[str]]:
    """`tiles` in runs of `k` (the last may be shorter)."""
    k = max(1, int(k))
    return [tiles[i:i + k] for i in range(0, len(tiles), k)]


def is_bundle(unit: str) -> bool:
    return _BUNDLE.match(unit) is not None


def first_and_count(unit: str) -> tuple[str, int]:
    """(first tile, number of tiles) of a unit (a plain tile: itself, 1)."""
    m = _BUNDLE.match(unit)
    return (m["first"], int(m["more"]) + 1) if m else (unit, 1)


def members(tiles: list, unit: str) -> list:
    """The TilePlans of task `unit` among `tiles` (the plan's, or a task plan's own): the first tile
    and those that follow it in the same group, as the planner made the runs; [] if not found.
    One task's lookup; for many, build `Runs` once."""
    return Runs(tiles).members(unit)


class Runs:
    """Each group's tiles in plan order, to find many bundles' members in one pass over the tiles
    (`members` per bundle searches the tiles each time: tiles x bundles at plan time).

    `at`: tile name -> (group, its position among its group's tiles)."""

    def __init__(self, tiles: list):
        self.by_group: dict = {}
        self.at: dict[str, tuple] = {}
        for t in tiles:
            run = self.by_group.setdefault(t.group, [])
            self.at.setdefault(t.name, (t.group, len(run)))
            run.append(t)

    def members(self, unit: str) -> list:
        """The first tile of `unit` and those that follow it in its group ([] if not found)."""
        first, count = first_and_count(unit)
        if first not in self.at:
            return []
        group, i = self.at[first]
        return self.by_group[group][i:i + count]

    def holds(self, unit: str, tile: str) -> bool:
        """Whether task `unit` segments `tile`, without listing its members."""
        first, count = first_and_count(unit)
        if first not in self.at or tile not in self.at:
            return False
        (group, i), (tile_group, j) = self.at[first], self.at[tile]
        return group == tile_group and 0 <= j - i < count
