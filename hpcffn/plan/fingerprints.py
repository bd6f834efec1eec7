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
                which leave the result as it is, nor the consensus settings past on/off), its
                model's, its volume's
    reverse     the tile's forward pass's (its seeds are that pass's origins)
    (a task of several tiles, tiles_per_task > 1: its tiles' together; their markers hold it)
    consensus   ffn.inference.consensus and the tile's reverse pass's
    joins, resolve, relabel   ffn.stitch and every infer fingerprint of the volume
    pyramid     subvolume.size and every volume's resolve fingerprint
    evaluate    every volume's stitched (or inferred) fingerprint and groundtruth
"""

from __future__ import annotations

import json
from hashlib import blake2b

from hpcffn.core.bundles import Runs, is_bundle
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import STAGE
from hpcffn.core.units import tile_records


def _h(*parts: str) -> str:
    """32 hex digits: a fingerprint, or the stage half of a tile's (`_mixed`)."""
    return blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def _js(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _mixed(prefix: str, tile_hash: dict[str, str], names) -> dict[str, str]:
    """name -> the stage's half and the tile's own half: a tile's fingerprint without a hash per tile and stage."""
    half = prefix[:16]
    return {n: half + tile_hash[n] for n in names}


def unit_fingerprints(plan: Plan, records: dict[str, str] | None = None) -> dict[str, list[str]]:
    """job name -> the fingerprint of each of its tasks' units (task i: job.units[i]).

    Tile units hash their record once (100,000s of them); what the stage adds is one hash per
    volume and group, mixed in. The stitch steps after infer depend on every tile of their volume,
    so all units of a volume share one fingerprint there.
    """
    records = records if records is not None else tile_records(plan.tiles)
    ffn = plan.ffn
    spec = plan.spec
    by_volume: dict[str, list] = {}
    for t in plan.tiles:
        by_volume.setdefault(t.volume, []).append(t)
    tile_hash = {n: blake2b(r.encode(), digest_size=8).hexdigest() for n, r in records.items()}
    # convert as plan.json has it (null in plans made before convert.clahe, so their units keep their fingerprints)
    convert = _js(spec.model_dump(mode="json", include={"convert"}).get("convert"))
    vol = {v.name: _h("volume", v.model_dump_json(), convert,
                      _js([records[t.name] for t in by_volume.get(v.name, [])]) if v.tile_files else "")
           for v in plan.volumes}
    fps: dict[str, dict[str, str]] = {"convert": vol}
    params = _js(ffn.partitions.model_dump(mode="json"))
    part: dict[str, str] = {}
    for v, tiles in by_volume.items():
        part.update(_mixed(_h("partitions", params, vol[v]), tile_hash, [t.name for t in tiles if t.group]))
    fps["partitions"] = part
    params = _js(ffn.coordinates.model_dump(mode="json"))
    coords = {g.name: _h("coordinates", params, g.name, *g.tiles, *(part.get(t, "") for t in g.tiles))
              for g in plan.groups}
    fps["coordinates"] = coords
    params = _js([ffn.model.model_dump(mode="json"),
                  ffn.training.model_dump(mode="json", exclude={"checkpoint_minutes"})])
    train = {g: _h("train", params, fp) for g, fp in coords.items()}
    fps["train"] = train
    infer_params = ffn.inference.model_dump(mode="json", exclude={"checkpoint_minutes", "parallel_fills", "consensus"})
    consensus = ffn.inference.consensus
    params = _js([ffn.model.model_dump(mode="json"), infer_params, consensus is not None])
    first = plan.groups[0].name if plan.groups else None
    checkpoint = ffn.inference.checkpoint or ""  # the model infer uses: that path, or its group's training
    by_model: dict[tuple[str, str | None], list[str]] = {}
    for t in plan.tiles:
        by_model.setdefault((t.volume, t.group or first), []).append(t.name)
    infer: dict[str, str] = {}
    for (v, g), names in by_model.items():
        infer.update(_mixed(_h("infer", params, checkpoint or train.get(g or "", ""), vol[v]), tile_hash, names))
    fps["infer"] = infer
    if consensus is not None:
        fps["reverse"] = {t: _h("reverse", fp) for t, fp in infer.items()}
        params = _js(consensus.model_dump(mode="json"))
        fps["consensus"] = {t: _h("consensus", params, fp) for t, fp in fps["reverse"].items()}
    segmented = fps.get("consensus", infer)  # what joins, stitch and evaluate read
    stitch = _js(ffn.stitch.model_dump(mode="json"))
    inferred = {v: _h("inferred", stitch, *(segmented[t.name] for t in tiles)) for v, tiles in by_volume.items()}
    resolved = {v.name: _h("resolve", inferred.get(v.name, "")) for v in plan.volumes}
    fps["resolve"] = resolved
    joins = {v: _h("joins", fp) for v, fp in inferred.items()}
    relabel = {v: _h("relabel", fp) for v, fp in resolved.items()}
    fps["joins"] = {t.name: joins[t.volume] for t in plan.tiles}
    fps["relabel"] = {t.name: relabel[t.volume] for t in plan.tiles}
    stitched = "joins" in {j.stage for j in plan.jobs}
    fps["evaluate"] = {"experiment": _h("evaluate", _js(None), str(stitched),  # null: the spec has no evaluate section
                                        *(resolved if stitched else inferred).values(),
                                        *(vol[v.name] for v in plan.volumes if v.groundtruth))}
    pyramid = _h("pyramid", _js(spec.subvolume.size), *resolved.values())
    everything = _h(plan.model_dump_json(include={"ffn", "spec", "volumes"}), *inferred.values())
    out = {}
    runs = None  # the tiles of bundles, found in one pass (core/bundles.py)
    for job in plan.jobs:
        if job.stage == "pyramid":  # blocks are counted, not listed in the tables (100,000s)
            out[job.name] = [pyramid] * len(job.units)
            continue
        table = fps.get(job.stage)
        if table is None:  # a stage this module does not know yet: changed by any change at all
            table = {u: _h("other", job.stage, everything) for u in job.units}
        if STAGE[job.stage].inference_pass and any(map(is_bundle, job.units)):  # tiles_per_task > 1
            runs = runs or Runs(plan.tiles)
            table = {**table, **{u: _h("tiles", *(table[t.name] for t in runs.members(u)))
                                 for u in job.units if is_bundle(u)}}
        try:
            out[job.name] = list(map(table.__getitem__, job.units))
        except KeyError:  # a unit this module does not know yet: changed by any change at all
            out[job.name] = [table.get(u) or _h("other", job.stage, everything, u) for u in job.units]
    return out
