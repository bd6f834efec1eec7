"""Evaluation: variation of information (split/merge) and adapted Rand error against groundtruth.

Metrics come from scikit-image (VI in bits); groundtruth voxels labelled 0 are ignored (unlabelled), while
voxels a segmentation left at 0 count as one more segment (missed voxels are penalised).
In plan mode each tile's segmentation is cropped to the tile's `box` (the part it owns);
volume and overall figures are voxel-weighted means over tiles, since tiles are segmented
independently and share no ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpcffn.errors import HpcffnError
from hpcffn.plan_model import Plan
from hpcffn.volumes import open_dataset, parse_location, read_box

METRICS = ("adapted_rand_error", "rand_precision", "rand_recall", "vi_split", "vi_merge")


def compare(seg: np.ndarray, groundtruth: np.ndarray) -> dict:
    """Metrics of one segmentation against groundtruth of the same shape."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    if seg.shape != groundtruth.shape:
        raise HpcffnError(f"segmentation shape {seg.shape} differs from groundtruth shape {groundtruth.shape}")
    labelled = int(np.count_nonzero(groundtruth))
    out = {"voxels": int(seg.size), "labelled_voxels": labelled,
           "segments": len(np.unique(seg[seg > 0])), "objects": len(np.unique(groundtruth[groundtruth > 0]))}
    if labelled == 0:
        return {**out, **{m: None for m in METRICS}}
    gt = groundtruth.astype(np.uint64, copy=False)
    sg = seg.astype(np.uint64, copy=False)
    # scikit-image divides its "precision" by the pairs joined in the groundtruth (its table's
    # rows are the true labels), which is recall in the usual sense; swap them so that
    # precision drops with merges and recall with splits.
    are, rec, prec = adapted_rand_error(gt, sg, ignore_labels=(0,))
    # skimage returns [H(seg|gt), H(gt|seg)] in bits: the first grows when objects are split,
    # the second when they are merged.
    h_seg_given_gt, h_gt_given_seg = variation_of_information(gt, sg, ignore_labels=(0,))
    return {**out, "adapted_rand_error": float(are), "rand_precision": float(prec), "rand_recall": float(rec),
            "vi_split": float(h_seg_given_gt), "vi_merge": float(h_gt_given_seg)}


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
        offset = tuple(int(v) for v in ds.attrs.get("offset", ds.file.attrs.get("offset", (0, 0, 0))))
    return data, offset  # type: ignore[return-value]


def evaluate_files(seg: str, groundtruth: str, output: str | Path | None = None, log=print) -> dict:
    """Standalone: compare seg ("path.h5:seg") with groundtruth ("path.h5:stack").

    When the groundtruth is larger than the segmentation, the segmentation's `offset` attribute
    places it (infer outputs carry one).
    """
    from hpcffn.volumes import dataset_shape

    data, offset = read_segmentation(seg)
    gt_loc = parse_location(groundtruth, "stack")
    gt_shape = dataset_shape(gt_loc)
    if tuple(gt_shape) == data.shape:
        offset = (0, 0, 0)
    stop = [o + n for o, n in zip(offset, data.shape)]
    if data.ndim != 3 or any(o < 0 for o in offset) or any(e > g for e, g in zip(stop, gt_shape)):
        raise HpcffnError(
            f"segmentation {seg} (shape {data.shape}, offset {offset}) does not lie inside groundtruth "
            f"{groundtruth} (shape {tuple(gt_shape)}): compare it with the groundtruth of its own volume"
        )
    gt = read_box(gt_loc, offset, data.shape)
    row = {"tile": Path(parse_location(seg, "seg").path).name, "offset": list(offset), **compare(data, gt)}
    report = {"segmentation": seg, "groundtruth": groundtruth, "tiles": [row], "overall": weighted_mean([row])}
    log(format_table([row]))
    if output is not None:
        write_report(Path(output), report)
    return report


def write_report(path: Path, report: dict) -> None:
    from hpcffn.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


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
    report = {"plan": str(plan.layout.plan), "tiles": rows, "volumes": by_volume,
              "overall": weighted_mean(rows), "missing_segmentations": missing}
    if rows:
        summary = [{"tile": f"[{v}]", **m} for v, m in by_volume.items()] + [{"tile": "[overall]", **report["overall"]}]
        log(format_table(rows + summary))
    else:
        log("hpcffn evaluate: no tile with groundtruth has a segmentation yet; the report lists none")
    if missing:
        log(f"hpcffn evaluate: {len(missing)} tiles with groundtruth have no segmentation yet: {', '.join(missing[:5])}")
    write_report(plan.layout.evaluation_report, report)
    mark_done(plan, "evaluate", "experiment", tiles=len(rows), missing=len(missing))
    return report
