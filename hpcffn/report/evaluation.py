"""The evaluation table the report and `hpcffn report` print: per tile, per group, per volume,
overall and per stitched volume, from evaluate/report.json."""

from __future__ import annotations

import json
import textwrap

from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import Plan
from hpcffn.stages.evaluate import format_table, weighted_mean

HOW_TO_READ = (
    "How to read it: adapted Rand error (ARE; 0 perfect, 1 nothing right) is 1 - the F-score of "
    "voxel pairs; its precision falls when objects are merged, its recall when they are split. "
    "VI split and VI merge (bits; 0 perfect) measure the same two mistakes: VI split grows when one "
    "true object is cut into several segments, VI merge when separate objects are joined into one. "
    "Merges cost more to proofread than splits, so between two results prefer the one with the "
    "lower VI merge. The stitched row also counts mistakes where tiles meet: compare it with "
    "[overall] to judge the stitching."
)


def load_evaluation(plan: Plan) -> dict | None:
    """evaluate/report.json, or None before the evaluate stage ran."""
    path = plan.layout.evaluation_report
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HpcffnError(f"{path} is not readable JSON ({exc}): re-run `hpcffn submit --stage evaluate`") from None
    problem = _shape_problem(report)
    if problem:
        raise HpcffnError(f"{path} is not an evaluation report ({problem}): re-run `hpcffn submit --stage evaluate`")
    return report


def _shape_problem(report) -> str | None:
    """What in the JSON is not the layout stages/evaluate.py writes, or None."""
    if not isinstance(report, dict):
        return f"the top level is a {type(report).__name__}, not an object"
    tiles = report.get("tiles", [])
    if not isinstance(tiles, list) or not all(isinstance(r, dict) and isinstance(r.get("tile"), str) for r in tiles):
        return '"tiles" is not a list of rows with a "tile" name'
    for key in ("volumes", "stitched"):
        value = report.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(m, dict) for m in value.values()):
            return f'"{key}" is not an object of per-volume figures'
    if tiles and not isinstance(report.get("overall"), dict):
        return '"overall" is missing or not an object'
    return None


def evaluation_rows(plan: Plan, report: dict) -> list[dict]:
    """Rows named in their `tile` column: each tile, then [group], [volume], [overall], [stitched]."""
    tiles = report.get("tiles", [])
    group_of = {t.name: t.group for t in plan.tiles}
    rows = [dict(r, kind="tile") for r in tiles]
    for group in plan.groups:
        members = [r for r in tiles if group_of.get(r["tile"]) == group.name]
        if members:
            rows.append({"tile": f"[{group.name}]", "kind": "group", **weighted_mean(members)})
    rows += [{"tile": f"[{v}]", "kind": "volume", **m} for v, m in report.get("volumes", {}).items()]
    if tiles:
        rows.append({"tile": "[overall]", "kind": "overall", **report["overall"]})
    rows += [{"tile": f"[{v} stitched]", "kind": "stitched", **m} for v, m in report.get("stitched", {}).items()]
    return rows


def evaluation_text(plan: Plan) -> str:
    """The table as text with the sentence on reading it, or a line saying it is not there yet."""
    report = load_evaluation(plan)
    if report is None:
        return f"no evaluation yet ({plan.layout.evaluation_report} is missing: the evaluate stage has not run)"
    rows = evaluation_rows(plan, report)
    if not rows:
        return "the evaluation holds no tile: no tile with groundtruth had a segmentation when evaluate ran"
    return format_table(rows) + "\n\n" + textwrap.fill(HOW_TO_READ, 100)
