"""Evaluation: variation of information (split/merge) and adapted Rand error against groundtruth.

Metrics come from scikit-image (VI in bits); groundtruth voxels labelled 0 are ignored (unlabelled), while
voxels a segmentation left at 0 count as one more segment (missed voxels are penalised).
In plan mode each tile's segmentation is cropped to the tile's `box` (the part it owns);
volume and overall figures are voxel-weighted means over tiles, since tiles are segmented
independently and share no ids. A volume's stitched segmentation (stage stitch), when present,
is also compared as a whole, which counts errors made where tiles meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.io.labeling import pair_counts
from hpcffn.io.volumes import (
    Location,
    dataset_offset,
    open_dataset,
    parse_location,
    read_box,
)

METRICS = ("adapted_rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge")


class Contingency:
    """Voxel counts of (groundtruth id, segment id) over labelled groundtruth, added block by block.

    Both metrics need only this table, so a whole stitched volume is evaluated slab by slab
    in bounded memory; scikit-image computes the metrics from it.
    """

    def __init__(self):
        self.voxels = 0
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._segments: list[np.ndarray] = []

    def add(self, seg: np.ndarray, groundtruth: np.ndarray) -> Contingency:
        if seg.shape != groundtruth.shape:
            raise HpcffnError(f"segmentation shape {seg.shape} differs from groundtruth shape {groundtruth.shape}")
        self.voxels += seg.size
        self._segments.append(np.unique(seg[seg > 0]))
        labelled = groundtruth > 0
        if labelled.any():
            self._pairs.append(pair_counts(groundtruth[labelled].astype(np.uint64, copy=False),
                                           seg[labelled].astype(np.uint64, copy=False)))
        if len(self._pairs) > 32:  # keep the partial tables few
            self._pairs = [self._merged()]
        if len(self._segments) > 32:
            self._segments = [np.unique(np.concatenate(self._segments))]
        return self

    def _merged(self):
        g, s, c = (np.concatenate(parts) for parts in zip(*self._pairs))
        return pair_counts(g, s, weights=c.astype(np.float64))

    def metrics(self) -> dict:
        from scipy import sparse
        from skimage.metrics import adapted_rand_error, variation_of_information

        segments = len(np.unique(np.concatenate(self._segments))) if self._segments else 0
        out = {"voxels": self.voxels, "labelled_voxels": 0, "segments": segments, "objects": 0}
        if not self._pairs:
            return {**out, **{m: None for m in METRICS}}
        g, s, c = self._merged()
        ug, gi = np.unique(g, return_inverse=True)
        us, si = np.unique(s, return_inverse=True)
        table = sparse.csr_array((c, (gi.ravel(), si.ravel())), shape=(len(ug), len(us)))
        labelled = float(c.sum())
        out.update(labelled_voxels=int(labelled), objects=len(ug))
        # scikit-image divides its "precision" by the pairs joined in the groundtruth (the
        # table's rows), which is recall in the usual sense; swap them so that precision
        # drops with merges and recall with splits.
        are, rec, prec = adapted_rand_error(table=table)
        # [H(seg|gt), H(gt|seg)] in bits: the first grows when objects are split, the second
        # when they are merged.
        none = np.zeros(0)
        h_seg_given_gt, h_gt_given_seg = variation_of_information(none, none, table=table / labelled)
        return {**out, "adapted_rand_error": float(are), "rand_precision": float(prec), "rand_recall": float(rec),
                "vi_split": float(h_seg_given_gt), "vi_merge": float(h_gt_given_seg)}


def compare(seg: np.ndarray, groundtruth: np.ndarray) -> dict:
    """Metrics of one segmentation against groundtruth of the same shape."""
    return Contingency().add(seg, groundtruth).metrics()


def weighted_mean(rows: list[dict]) -> dict:
    """Voxel-weighted (by labelled voxels) mean of each metric over rows that have it."""
    out: dict = {"tiles": len(rows)}
    for m in METRICS:
        pairs = [(r[m], r["labelled_voxels"]) for r in rows if r.get(m) is not None]
        weight = sum(w for _, w in pairs)
        out[m] = sum(v * w for v, w in pairs) / weight if weight else None
    out["labelled_voxels"] = sum(r["labelled_voxels"] for r in rows)
    return out


def format_table(rows: list[dict], name_key: str = "tile") -> str:
    """A plain text table of the metrics (one row per tile, plus summaries)."""
    heads = [name_key, "ARE", "precision", "recall", "VI split", "VI merge", "segments", "objects"]
    keys = ["adapted_rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge"]
    lines = []
    for r in rows:
        vals = [str(r.get(name_key, ""))]
        vals += ["-" if r.get(k) is None else f"{r[k]:.4f}" for k in keys]
        vals += [str(r.get("segments", "")), str(r.get("objects", ""))]
        lines.append(vals)
    widths = [max(len(h), *(len(v[i]) for v in lines)) if lines else len(h) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*heads)] + [fmt.format(*v) for v in lines])


def read_segmentation(loc_text: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A segmentation and its `offset` attribute (0,0,0 when absent)."""
    loc = parse_location(loc_text, "seg")
    with open_dataset(loc) as ds:
        data = ds[...]
        offset = dataset_offset(ds)
    return data, offset  # type: ignore[return-value]


def evaluate_files(seg: str, groundtruth: str, output: str | Path | None = None, log=print) -> dict:
    """Standalone: compare seg ("path.h5:seg") with groundtruth ("path.h5:stack").

    When the groundtruth is larger than the segmentation, the segmentation's `offset` attribute
    places it (infer outputs carry one).
    """
    from hpcffn.io.volumes import dataset_shape, segmentation_box

    seg_loc = parse_location(seg, "seg")
    offset, shape = segmentation_box(seg_loc)
    gt_loc = parse_location(groundtruth, "stack")
    gt_shape = dataset_shape(gt_loc)
    if tuple(gt_shape) == shape:
        offset = (0, 0, 0)
    stop = [o + n for o, n in zip(offset, shape)]
    if any(o < 0 for o in offset) or any(e > g for e, g in zip(stop, gt_shape)):
        raise HpcffnError(
            f"segmentation {seg} (shape {shape}, offset {offset}) does not lie inside groundtruth "
            f"{groundtruth} (shape {tuple(gt_shape)}): compare it with the groundtruth of its own volume"
        )
    row = {"tile": Path(seg_loc.path).name, "offset": list(offset), **compare_datasets(seg_loc, gt_loc, offset)}
    report = {"segmentation": seg, "groundtruth": groundtruth, "tiles": [row], "overall": weighted_mean([row])}
    log(format_table([row]))
    if output is not None:
        write_report(Path(output), report)
    return report


def write_report(path: Path, report: dict) -> None:
    from hpcffn.core.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


SLAB_VOXELS = 16 * 2**20  # per slab read: ~128 MB of uint64 ids for each of seg and groundtruth


def compare_datasets(seg_loc: Location, gt_loc: Location, offset=(0, 0, 0)) -> dict:
    """Metrics of a whole segmentation dataset against the groundtruth box at `offset`, read in
    z-slabs of about SLAB_VOXELS (bounded memory for volume-sized segmentations)."""
    table = Contingency()
    with open_dataset(seg_loc) as seg, open_dataset(gt_loc) as gt:
        o = offset
        slab = max(1, SLAB_VOXELS // max(1, seg.shape[1] * seg.shape[2]))
        for z in range(0, seg.shape[0], slab):
            block = seg[z:z + slab]
            table.add(block, gt[o[0] + z:o[0] + z + len(block), o[1]:o[1] + seg.shape[1], o[2]:o[2] + seg.shape[2]])
    return table.metrics()


def evaluate_stitched(path: Path, volume) -> dict:
    """Metrics of a volume's stitched segmentation against its groundtruth.

    Unlike the per-tile figures, these count objects split or merged across tile borders.
    `path` is the OME-Zarr volume (its labels, level 0) or a single-task stitch's HDF5.
    """
    from hpcffn.io.volumes import dataset_shape

    gt_loc = parse_location(volume.groundtruth, "stack")
    shape, gt_shape = dataset_shape(Location(path, "seg")), dataset_shape(gt_loc)
    if shape != gt_shape:
        raise HpcffnError(f"{path} has shape {shape}, groundtruth {gt_loc} {gt_shape}: "
                          f"re-run stitch for volume {volume.name}")
    return compare_datasets(Location(path, "seg"), gt_loc)


def run_from_plan(plan: Plan, log=print) -> dict:
    """Evaluate every tile with groundtruth whose segmentation exists; report JSON + marker."""
    from hpcffn.stages.markers import mark_done

    rows, missing = [], []
    for tile in plan.tiles:
        volume = plan.volume(tile.volume)
        if not volume.groundtruth:
            continue
        seg_path = plan.layout.segmentation(tile.name)
        if not seg_path.is_file():
            missing.append(tile.name)
            continue
        data, offset = read_segmentation(f"{seg_path}:seg")
        if tuple(offset) != tuple(tile.infer_box.start) or data.shape != tuple(tile.infer_box.size):
            raise HpcffnError(
                f"{seg_path} covers offset {offset} shape {data.shape}, not tile {tile.name}'s infer_box "
                f"{tile.infer_box.start} {tile.infer_box.size}: it is from another plan; re-run its infer task"
            )
        inner = tuple(slice(b - i, b - i + n) for b, i, n in zip(tile.box.start, tile.infer_box.start, tile.box.size))
        gt = read_box(volume.groundtruth, tile.box.start, tile.box.size, "stack")
        rows.append({"tile": tile.name, "volume": volume.name, **compare(data[inner], gt)})
    by_volume = {}
    for name in dict.fromkeys(r["volume"] for r in rows):
        by_volume[name] = weighted_mean([r for r in rows if r["volume"] == name])
    stitched = {v.name: evaluate_stitched(plan.layout.stitched(v.name), v) for v in plan.volumes
                if v.groundtruth and plan.layout.stitched(v.name).is_dir()}
    report = {"plan": str(plan.layout.plan), "tiles": rows, "volumes": by_volume,
              "overall": weighted_mean(rows), "stitched": stitched, "missing_segmentations": missing}
    if rows:
        summary = [{"tile": f"[{v}]", **m} for v, m in by_volume.items()] + [{"tile": "[overall]", **report["overall"]}]
        summary += [{"tile": f"[{v} stitched]", **m} for v, m in stitched.items()]
        log(format_table(rows + summary))
    else:
        log("hpcffn evaluate: no tile with groundtruth has a segmentation yet; the report lists none")
    if missing:
        log(f"hpcffn evaluate: {len(missing)} tiles with groundtruth have no segmentation yet: {', '.join(missing[:5])}")
    write_report(plan.layout.evaluation_report, report)
    mark_done(plan, "evaluate", "experiment", tiles=len(rows), missing=len(missing))
    return report
