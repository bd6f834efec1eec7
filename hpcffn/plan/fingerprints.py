"""What each unit of work means, as a short hash: its box, the parameters that shape it and
the fingerprints of the units it reads (so a change upstream changes everything downstream).

`hpcffn plan` writes them beside the unit indexes (units/<job>.fp, core/units.py); a stage
writes its unit's fingerprint into the success marker, and a re-plan compares the old plan's
fingerprints with the new one's (jobs/replan.py): a unit whose fingerprint changed is no
longer done, whatever its marker, its name or SLURM say.

    convert     the volume's record (inputs, their identity, polarity, rescale...) and convert.*
    partitions  the tile's boxes, ffn.partitions, its volume's
    coordinates the group's tiles, ffn.coordinates, their partitions'
    train       ffn.model, ffn.training (not checkpoint_minutes), the group's coordinates'
    infer       the tile's boxes, ffn.model, ffn.inference (not checkpoint_minutes/parallel_fills,
                which leave the result as it is), its model's, its volume's
    joins, resolve, relabel, pyramid   ffn.stitch and every infer fingerprint of the volume
    evaluate    every volume's stitched (or inferred) fingerprint and groundtruth
"""

from __future__ import annotations

import json
from hashlib import blake2b

from hpcffn.core.plan_model import Plan
from hpcffn.core.units import tile_records


def _h(*parts: str) -> str:
    return blake2b("\x1f".join(parts).encode(), digest_size=8).hexdigest()


def _js(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def unit_fingerprints(plan: Plan, records: dict[str, str] | None = None) -> dict[str, list[str]]:
    """job name -> the fingerprint of each of its tasks' units (task i: job.units[i])."""
    records = records if records is not None else tile_records(plan.tiles)
    ffn = plan.ffn
    stages = {j.stage for j in plan.jobs}
    spec = plan.spec
    by_volume: dict[str, list] = {}
    for t in plan.tiles:
        by_volume.setdefault(t.volume, []).append(t)
    vol = {v.name: _h("volume", v.model_dump_json(), _js(spec.get("convert")),
                      _js([records[t.name] for t in by_volume.get(v.name, [])]) if v.tile_files else "")
           for v in plan.volumes}
    fps: dict[str, dict[str, str]] = {"convert": vol}
    params = _js(ffn.partitions.model_dump(mode="json"))
    part = {t.name: _h("partitions", params, vol[t.volume], records[t.name]) for t in plan.tiles if t.group}
    fps["partitions"] = part
    params = _js(ffn.coordinates.model_dump(mode="json"))
    coords = {g.name: _h("coordinates", params, g.name, *g.tiles, *(part.get(t, "") for t in g.tiles)) for g in plan.groups}
    fps["coordinates"] = coords
    params = _js([ffn.model.model_dump(mode="json"),
                  ffn.training.model_dump(mode="json", exclude={"checkpoint_minutes"})])
    train = {g: _h("train", params, fp) for g, fp in coords.items()}
    fps["train"] = train
    if "infer" not in stages and "evaluate" not in stages and not stages & {"joins", "resolve"}:
        return _per_job(plan, fps)
    infer_params = ffn.inference.model_dump(mode="json", exclude={"checkpoint_minutes", "parallel_fills"})
    params = _js([ffn.model.model_dump(mode="json"), infer_params])
    first = plan.groups[0].name if plan.groups else None
    checkpoint = ffn.inference.checkpoint or ""  # the model infer uses: that path, or its group's training
    infer = {t.name: _h("infer", params, checkpoint or train.get(t.group or first, ""), vol[t.volume],
                        records[t.name]) for t in plan.tiles}
    fps["infer"] = infer
    stitch = _js(ffn.stitch.model_dump(mode="json"))
    inferred = {v: _h("inferred", stitch, *(infer[t.name] for t in tiles)) for v, tiles in by_volume.items()}
    fps["joins"] = {t.name: _h("joins", inferred[t.volume], t.name) for t in plan.tiles}
    fps["resolve"] = resolved = {v.name: _h("resolve", inferred.get(v.name, "")) for v in plan.volumes}
    fps["relabel"] = {t.name: _h("relabel", resolved[t.volume], infer[t.name], t.name) for t in plan.tiles}
    everything = _h("stitched", _js(spec["subvolume"]["size"]), *resolved.values())
    fps["pyramid"] = _Pyramid(everything)
    stitched = "joins" in stages
    fps["evaluate"] = {"experiment": _h("evaluate", _js(spec.get("evaluate")), str(stitched),
                                        *(resolved if stitched else inferred).values(),
                                        *(vol[v.name] for v in plan.volumes if v.groundtruth))}
    return _per_job(plan, fps)


class _Pyramid(dict):
    """Pyramid blocks (counted per level, 100,000s): every block hashes the whole stitch."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def __missing__(self, unit: str) -> str:
        return _h("pyramid", self.base, unit)


def _per_job(plan: Plan, fps: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    out = {}
    for job in plan.jobs:
        table = fps.get(job.stage, {})
        out[job.name] = [table[u] if u in table or isinstance(table, _Pyramid) else _h(job.stage, u)
                         for u in job.units]  # (a stage without a table here: its name and unit)
    return out
