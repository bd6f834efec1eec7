"""What inference will cost, per infer job (GPU group), before anything is submitted.

FOVs a tile needs are not known before it is segmented; they scale with its voxels and with how
densely the tissue is packed. The estimate uses FFN's own run on the FIB-25 reference box
(dense neuropil: 2,469 FOVs for 132^3 voxels, shared/fib25/README.md), so sparse tissue costs
less. Model calls: a task of K tiles evaluates one FOV of each of its working tiles per call,
so about FOVs / K. Hours: FOVs / `ffn.inference.fov_per_second`, the FOV/s one task reaches at
this K on the cluster's GPU (benchmarks/bench_gpu.py measures it); unset, Google FFN's own
FIB-25 figure on a 2-core CPU (4.5 FOV/s), which a GPU beats, so set it.

Memory: a task of K tiles holds K canvases at once (`task_memory`), which `hpcffn plan` checks
against the infer stage's memory request (plan/limits.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcffn.core.bundles import bundles
from hpcffn.core.plan_model import JobPlan, Plan, TilePlan

FOVS_PER_VOXEL = 2469 / 132**3  # Google FFN on the FIB-25 reference box
DEFAULT_FOV_PER_SECOND = 4.5  # Google FFN, same run, 2-core CPU, batch 1
# Bytes per voxel of a tile's infer box (docs/train_infer.md, "Memory"): its canvas (normalised
# image, float32 logits, int32 segmentation) for as long as the tile runs; on top of that, one
# tile at a time, the seeds' peak or the uint64 output being written.
CANVAS_BYTES_PER_VOXEL = 12
PEAK_BYTES_PER_VOXEL = 9


@dataclass
class InferCost:
    job: str
    group: str
    tiles: int
    tasks: int
    voxels: int
    fovs: float
    model_calls: float
    hours: float  # GPU-hours (task-hours: one GPU per task)


def fov_rate(plan: Plan) -> tuple[float, str]:
    """(FOV/s, where it comes from)."""
    rate = plan.ffn.inference.fov_per_second
    if rate:
        return rate, "ffn.inference.fov_per_second"
    return DEFAULT_FOV_PER_SECOND, "default: Google FFN's FIB-25 run on a 2-core CPU; set ffn.inference.fov_per_second"


def infer_costs(plan: Plan) -> list[InferCost]:
    """One estimate per infer job of the plan (needs the plan's tiles)."""
    voxels_of = {t.name: t.infer_box.voxels for t in plan.tiles}
    group_of = {t.name: t.group for t in plan.tiles}
    k = plan.ffn.inference.tiles_per_task
    rate, _ = fov_rate(plan)
    out = []
    for job in plan.jobs:
        if job.stage != "infer":
            continue
        names = [t.name for t in plan.tiles if (group_of[t.name] or None) == job.group]
        voxels = sum(voxels_of[n] for n in names)
        fovs = voxels * FOVS_PER_VOXEL
        tasks = len(job.units)
        per_task = len(names) / tasks if tasks else 1
        out.append(InferCost(job.name, job.group or "-", len(names), tasks, voxels, fovs,
                             fovs / max(1.0, min(k, per_task)), fovs / rate / 3600))
    return out


def task_memory(tiles: list[TilePlan], jobs: list[JobPlan], k: int) -> tuple[int, int]:
    """(bytes, tiles) of the infer task with the highest estimated peak: every tile's canvas at
    once, plus one tile's seeds or output. Tasks are the runs of K tiles of each infer job's group
    in plan order, as the planner cuts them (core/bundles.py); (0, 0) without an infer job."""
    by_group: dict[str | None, list[int]] = {}
    for t in tiles:
        by_group.setdefault(t.group or None, []).append(t.infer_box.voxels)
    best = (0, 0)
    for job in jobs:
        if job.stage != "infer":
            continue
        for task in bundles(by_group.get(job.group, []), k):
            need = CANVAS_BYTES_PER_VOXEL * sum(task) + PEAK_BYTES_PER_VOXEL * max(task)
            best = max(best, (need, len(task)))
    return best
