"""The report's pictures as PNG bytes (matplotlib's object API: no pyplot state, no display)."""

from __future__ import annotations

import io

import numpy as np

# Colours of the status categories (hpcffn/jobs/submit.py TaskView.category).
STATE_COLOURS = {"done": "#2e9e4f", "alive": "#3b7dd8", "failed": "#d64541", "lost": "#e08a1e",
                 "never": "#c9c9c9", "missing": "#8e44ad"}
STATE_WORDS = {"done": "done", "alive": "running/pending", "failed": "failed", "lost": "unknown",
               "never": "not submitted", "missing": "output missing"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def tile_grid(volume: str, tiles: list, stages: list[str], category, label) -> bytes:
    """One panel per (stage, z layer): the volume's y,x grid of tiles coloured by state.

    `tiles` are TilePlans; `category(stage, tile)` gives a status category or None (the stage
    does not run on that tile, e.g. partitions on a tile without groundtruth); `label(tile)`
    is the text written in the cell.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    nz = 1 + max(t.index[0] for t in tiles)
    ny = 1 + max(t.index[1] for t in tiles)
    nx = 1 + max(t.index[2] for t in tiles)
    cell = min(1.2, 6.0 / max(nx, 1))
    fig = _figure(max(3.0, cell * nx) * len(stages) + 1.0, max(2.0, cell * ny) * nz + 0.8)
    axes = np.atleast_2d(fig.subplots(nz, len(stages), squeeze=False))
    by_index = {tuple(t.index): t for t in tiles}
    for zi in range(nz):
        for si, stage in enumerate(stages):
            ax = axes[zi, si]
            image = np.ones((ny, nx, 3))
            for yi in range(ny):
                for xi in range(nx):
                    tile = by_index.get((zi, yi, xi))
                    cat = category(stage, tile) if tile is not None else None
                    image[yi, xi] = to_rgb(STATE_COLOURS.get(cat, "#ffffff"))
                    if tile is not None:
                        ax.text(xi, yi, label(tile) if cat is not None else "-", ha="center", va="center",
                                fontsize=8)
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks(range(nx))
            ax.set_yticks(range(ny))
            ax.set_xlabel("x tile")
            ax.set_ylabel("y tile")
            ax.set_title(stage if nz == 1 else f"{stage}, z tile {zi}", fontsize=10)
    handles = [Patch(color=c, label=STATE_WORDS[k]) for k, c in STATE_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"volume {volume}: tiles by stage state", fontsize=11)
    return _png(fig)


def training_curves(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> bytes:
    """Loss, precision/recall/F1 and examples/s against step, one line per group."""
    fig = _figure(12, 3.4)
    ax_loss, ax_pr, ax_speed = fig.subplots(1, 3)

    def line(ax, tags, tag, colour, **kw):
        points = tags.get(tag, [])
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, color=colour, **kw)

    for i, (group, tags) in enumerate(sorted(curves.items())):
        colour = f"C{i % 10}"  # one colour per group in every panel
        line(ax_loss, tags, "loss", colour, label=group)
        for tag, style in (("precision", ":"), ("recall", "--"), ("f1", "-")):
            line(ax_pr, tags, tag, colour, linestyle=style, label=f"{group} {tag}")
        line(ax_speed, tags, "examples_per_second", colour, label=group)
    for ax, title in ((ax_loss, "loss (per FOV)"), (ax_pr, "precision / recall / F1"),
                      (ax_speed, "FOV examples per second")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax_pr.set_ylim(0, 1.02)
    return _png(fig)


def random_colours(labels: np.ndarray) -> np.ndarray:
    """RGB image of a label slice: each id a pseudo-random colour (the same id always gets the
    same colour, so a tile and the stitched volume agree), 0 black."""
    ids, inverse = np.unique(labels, return_inverse=True)
    with np.errstate(over="ignore"):
        mixed = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing
    channels = [(mixed >> np.uint64(shift)) & np.uint64(255) for shift in (40, 48, 56)]
    palette = 0.25 + 0.75 * np.stack(channels, axis=-1).astype(np.float64) / 255.0
    palette[ids == 0] = 0.0
    return palette[inverse.reshape(labels.shape)]


def overlay(title: str, raw: np.ndarray, groundtruth: np.ndarray | None, segmentation: np.ndarray) -> bytes:
    """raw | groundtruth | segmentation of one z-slice (labels in random colours)."""
    panels = [("raw", raw, "gray")]
    if groundtruth is not None:
        panels.append(("groundtruth", random_colours(groundtruth), None))
    panels.append(("segmentation", random_colours(segmentation), None))
    height = 2.6
    width = height * raw.shape[1] / max(raw.shape[0], 1)
    fig = _figure(width * len(panels) + 0.4, height + 0.5)
    for ax, (name, image, cmap) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return _png(fig)
