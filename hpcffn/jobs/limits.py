"""SLURM array limits at submit time, and splitting an array into pieces that fit them.

Sites cap an array's task ids below MaxArraySize (SLURM's default is 1001, ids 0..1000) and
the jobs a user may queue (MaxSubmitJobs, every array task counting). A 10,000-tile infer
array is refused whole, so submit splits it: piece k covers plan tasks offset..offset+n-1 as
SLURM task ids 0..n-1, and the script adds HPCFFN_ARRAY_OFFSET (passed with --export) back,
so every task still works on its own unit. state.json records the offset of each piece.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcffn.core.plan_model import Plan
from hpcffn.jobs.slurm import Slurm

SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001
OFFSET_VAR = "HPCFFN_ARRAY_OFFSET"


@dataclass
class Limits:
    max_array_size: int
    max_submit_jobs: int | None
    source: str  # where max_array_size came from, for messages


# Where the array size limit came from (core/plan_model.ClusterPlan.array_limits), for messages.
_SOURCES = {"spec": "the spec's cluster.max_array_size", "slurm": "MaxArraySize of `scontrol show config`",
            "profile": "the profile's max_array_size", None: "SLURM's default MaxArraySize"}


def resolve(plan: Plan, scheduler: Slurm) -> Limits:
    """The spec's cluster settings, else what `scheduler` says, else the profile's, else SLURM's default.

    The scheduler is asked only when the spec leaves a limit open (its tools are slow to answer).
    """
    cluster = plan.spec.cluster
    asked_size = asked_submit = None
    if not (cluster.max_array_size and cluster.max_submit_jobs):
        asked_size, asked_submit = scheduler.array_limits()
    size, submit, source = cluster.array_limits(asked_size, asked_submit)
    return Limits(size or SLURM_DEFAULT_MAX_ARRAY_SIZE, submit, _SOURCES[source])


def pieces(tasks: list[int], limit: int) -> list[tuple[int, list[int]]]:
    """(offset, tasks) pieces of sorted task ids, each spanning fewer than `limit` ids.

    SLURM task ids of a piece are task - offset, so they stay in 0..limit-1; a single piece
    starting at 0 keeps the plan's own ids (offset 0), as before splitting existed.
    """
    out: list[tuple[int, list[int]]] = []
    for t in sorted(set(tasks)):
        if not out or t - out[-1][0] >= limit:
            out.append((t if out or t >= limit else 0, []))
        out[-1][1].append(t)
    return out


def export_option(offset: int) -> list[str]:
    """The sbatch option that hands a piece its offset (none for offset 0)."""
    return [f"--export=ALL,{OFFSET_VAR}={offset}"] if offset else []
