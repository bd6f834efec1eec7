"""Gather an experiment's state, curves, metrics and slices, and write report/index.html.

The page embeds its PNGs (data URIs), so the one HTML file can be mailed or copied off the
cluster alone; the PNGs are also written beside it for slides.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcffn.core.atomic import atomic_write_bytes, atomic_write_text
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import INFERENCE_PASSES, STAGE, TABLE
from hpcffn.plan.cost import fov_rate, infer_costs
from hpcffn.report import figures
from hpcffn.report.accounting import stage_usage
from hpcffn.report.evaluation import HOW_TO_READ, evaluation_rows, load_evaluation
from hpcffn.report.events import read_scalars
from hpcffn.report.slices import (
    stitched_slice,
    tile_candidates,
    tile_segmentation_slice,
    volume_slice,
)

# The stages pictured tile by tile (core/stage_table.py): those whose task is a tile, less the stitch steps.
TILE_STAGES = tuple(s.name for s in TABLE if s.planned and s.unit == "tile" and s.part_of != "stitch")
MAX_PIXELS = 1024  # a stitched slice wider than this is shown every n-th voxel


@dataclass
class Picture:
    name: str  # file name of the PNG
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Page:
    plan: Plan
    grids: list[Picture] = field(default_factory=list)
    curves: Picture | None = None
    overlays: list[Picture] = field(default_factory=list)
    evaluation: list[dict] | None = None
    usage: dict | None = None
    status_rows: list = field(default_factory=list)  # jobs/status.py StatusRow: the Jobs table of report.html.j2
    infer_costs: list = field(default_factory=list)  # plan/cost.py: expected FOVs, model calls, GPU-hours
    fov_rate: tuple = ()
    notes: list[str] = field(default_factory=list)


def _categories(plan: Plan, page: Page) -> dict[tuple[str, str], str]:
    from hpcffn.core.units import infer_task_tiles
    from hpcffn.jobs.status import collect

    report = collect(plan)
    page.notes += report.warnings
    page.status_rows = report.rows
    cats = {(r.stage, t["unit"]): t["category"] for r in report.rows for t in r.detail}
    for job in plan.jobs:  # a task of several tiles: each tile done by its marker, else as its task
        for unit, tiles in infer_task_tiles(plan, job).items():
            for tile in tiles:
                done = plan.layout.marker(job.stage, tile).is_file()
                cats[(job.stage, tile)] = "done" if done else cats.get((job.stage, unit), "never")
    return cats


def tile_grids(plan: Plan, cats: dict) -> list[Picture]:
    """One picture per volume: its tiles by the state of each tile-level stage (and training)."""
    stages = [s for s in TILE_STAGES if any(j.stage == s for j in plan.jobs)]
    if any(j.stage == "train" for j in plan.jobs):
        stages.insert(stages.index("infer") if "infer" in stages else len(stages), "train")
    out = []
    for volume in plan.volumes:
        tiles = [t for t in plan.tiles if t.volume == volume.name]
        if not tiles or not stages:
            continue

        def category(stage, tile):
            unit = tile.group if stage == "train" else tile.name
            return cats.get((stage, unit)) if unit is not None else None

        png = figures.tile_grid(volume.name, tiles, stages, category, lambda t: t.group or "")
        out.append(Picture(f"tiles_{volume.name}.png", f"{volume.name}: {len(tiles)} tiles; cells name the "
                           "training group (train: that group's job)", png))
    return out


def training_picture(plan: Plan) -> Picture | None:
    curves = {}
    for group in plan.groups:
        train_dir = plan.layout.train_dir(group.name)
        if train_dir.is_dir():
            scalars = read_scalars(train_dir)
            if scalars:
                curves[group.name] = scalars
    if not curves:
        return None
    return Picture("training.png", f"training of {len(curves)} group(s), from the TensorBoard event files in "
                   f"{plan.layout.root / 'train'}", figures.training_curves(curves))


def _shown_tiles(plan: Plan, count: int) -> list:
    """Up to `count` segmented tiles spread over the plan (groundtruth tiles first)."""
    done = [t for t in plan.tiles if plan.layout.segmentation(t.name).is_file()]
    if len(done) <= count:
        return done
    if count <= 1:
        return done[:count]
    return [done[round(i * (len(done) - 1) / (count - 1))] for i in range(count)]


def overlay_pictures(plan: Plan, tiles_shown: int) -> list[Picture]:
    out = []
    for tile in _shown_tiles(plan, tiles_shown):
        volume = plan.volume(tile.volume)
        ys, xs = (slice(s, s + n) for s, n in zip(tile.box.start[1:], tile.box.size[1:]))
        slices = {z: tile_segmentation_slice(plan, tile, z) for z in tile_candidates(tile)}
        z = max(slices, key=lambda k: 0 if slices[k] is None else len(np.unique(slices[k])))
        seg = slices[z]
        if seg is None:
            continue
        raw = volume_slice(volume.raw, z, ys, xs, "raw")
        gt = volume_slice(volume.groundtruth, z, ys, xs, "stack") if volume.groundtruth else None
        if plan.consensus:  # each pass beside the consensus they make
            for stage in INFERENCE_PASSES:
                name = STAGE[stage].pass_name
                one = tile_segmentation_slice(plan, tile, z, stage)
                if one is not None:
                    out.append(Picture(f"tile_{tile.name}_{name}.png", f"tile {tile.name}, z {z}, {name} pass",
                                       figures.overlay(f"tile {tile.name} {name} pass (z = {z})", raw, gt, one)))
        what = " consensus" if plan.consensus else ""
        out.append(Picture(f"tile_{tile.name}.png", f"tile {tile.name}, z {z}{what}",
                           figures.overlay(f"tile {tile.name}{what} (z = {z})", raw, gt, seg)))
    for volume in plan.volumes:
        z = volume.shape[0] // 2
        step = max(1, math.ceil(max(volume.shape[1:]) / MAX_PIXELS))
        seg = stitched_slice(plan, volume.name, z)
        if seg is None:
            continue
        seg = seg[::step, ::step]
        raw = volume_slice(volume.raw, z, slice(None, None, step), slice(None, None, step), "raw")
        gt = (volume_slice(volume.groundtruth, z, slice(None, None, step), slice(None, None, step), "stack")
              if volume.groundtruth else None)
        shown = f", every {step}th voxel" if step > 1 else ""
        out.append(Picture(f"stitched_{volume.name}.png", f"stitched volume {volume.name}, z {z}{shown}",
                           figures.overlay(f"{volume.name} stitched (z = {z})", raw, gt, seg)))
    return out


def gather(plan: Plan, tiles_shown: int = 3) -> Page:
    page = Page(plan)
    cats = _categories(plan, page)
    page.grids = tile_grids(plan, cats)
    page.curves = training_picture(plan)
    evaluation = load_evaluation(plan)
    page.evaluation = evaluation_rows(plan, evaluation) if evaluation is not None else None
    page.overlays = overlay_pictures(plan, tiles_shown)
    page.usage = stage_usage(plan)
    page.infer_costs = infer_costs(plan)
    page.fov_rate = fov_rate(plan)
    return page


def render_html(page: Page) -> str:
    import jinja2

    from hpcffn.plan.resources import templates_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(page=page, plan=page.plan, how_to_read=HOW_TO_READ,
                                                     colours=figures.STATE_COLOURS, words=figures.STATE_WORDS)


def write_report(plan: Plan, out_dir: Path | None = None, tiles_shown: int = 3) -> Path:
    """Write <out_dir>/index.html and its PNGs (default WORKDIR/report/); returns the HTML path."""
    out_dir = Path(out_dir) if out_dir is not None else plan.layout.report_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    page = gather(plan, tiles_shown)
    for picture in page.grids + page.overlays + ([page.curves] if page.curves else []):
        atomic_write_bytes(out_dir / picture.name, picture.png)
    html = out_dir / "index.html"
    atomic_write_text(html, render_html(page))
    return html
