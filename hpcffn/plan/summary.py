"""The table `hpcffn plan` prints: volumes, tiles, groups, jobs per stage and what was written."""

from __future__ import annotations

from hpcffn.core.plan_model import PlanSpec
from hpcffn.plan.render import pending_renders


def resource_cells(resolved_spec: PlanSpec, stage: str) -> list[str]:
    """time, memory, CPUs, GPUs a stage's jobs ask for ("-": SLURM's default)."""
    from hpcffn.core.stage_table import resource_stage

    res = resolved_spec.cluster.resources(resource_stage(stage))
    return [str(res.get(k) or "-") for k in ("time", "memory", "cpus", "gpus")]


def print_plan_summary(planned, report, dry_run: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False, highlight=False)
    plan = planned.plan
    for w in planned.warnings:
        console.print(f"[yellow]warning:[/] {w}")

    vt = Table(title=f"{plan.name}: volumes", title_justify="left")
    for col in ("volume", "shape z,y,x", "tiles", "groundtruth", "convert"):
        vt.add_column(col)
    counts: dict[str, int] = {}
    for t in plan.tiles:
        counts[t.volume] = counts.get(t.volume, 0) + 1
    for v in plan.volumes:
        vt.add_row(v.name, "x".join(map(str, v.shape)), str(counts.get(v.name, 0)),
                   v.polarity if v.groundtruth else "-", "yes" if v.needs_convert else "no")
    console.print(vt)
    if plan.groups:
        sizes = sorted({len(g.tiles) for g in plan.groups})
        console.print(f"{len(plan.groups)} GPU groups of {'/'.join(map(str, sizes))} tiles")

    jt = Table(title="jobs (resources: profile and spec merged)", title_justify="left")
    for col in ("stage", "jobs", "tasks", "waits for", "time", "memory", "CPUs", "GPUs"):
        jt.add_column(col)
    by_stage: dict[str, list] = {}
    for j in plan.jobs:
        by_stage.setdefault(j.stage, []).append(j)
    for stage, jobs in by_stage.items():
        tasks = sum(len(j.units) for j in jobs) if jobs[0].array else len(jobs)
        deps = sorted({d.job.split("_g")[0] for j in jobs for d in j.depends_on})
        jt.add_row(stage, str(len(jobs)), str(tasks), ", ".join(deps) or "-", *resource_cells(plan.spec, stage))
    console.print(jt)
    print_infer_costs(console, plan)

    verb = "would write" if dry_run else "wrote"
    console.print(f"{verb} {len(report.written)} scripts ({len(report.unchanged)} unchanged) into {plan.workdir}/jobs, "
                  f"plan.json and spec.resolved.yaml")
    for rel in report.kept_edited:
        console.print(f"[yellow]warning:[/] {rel} was edited by hand: kept it; the new render "
                      f"{'would go' if dry_run else 'went'} to {rel}.new (use --force to overwrite)")
    for rel in report.overwritten_edited:
        console.print(f"[yellow]warning:[/] {rel} was edited by hand and is {'to be ' if dry_run else ''}overwritten (--force)")
    waiting = [rel for rel in pending_renders(plan.layout) if rel.removesuffix(".new") not in report.kept_edited]
    if waiting and not dry_run:
        console.print(f"[yellow]note:[/] earlier renders still wait beside edited scripts: {', '.join(waiting)}")
    if report.stale:
        console.print(f"[yellow]warning:[/] no longer planned (left in place, not submitted): {', '.join(report.stale)}")
    if dry_run:
        for rel in report.written:
            console.print(f"  would write {rel}")
        for d in report.dirs:
            console.print(f"  would create {d}/")
    else:
        console.print(f"next: hpcffn check {plan.workdir} (each script runs once for seconds on its node), "
                      f"then hpcffn submit {plan.workdir}")


def print_infer_costs(console, plan) -> None:
    """Expected FOVs, model calls and GPU-hours of each infer job (hpcffn/plan/cost.py)."""
    from rich.table import Table

    from hpcffn.plan.cost import fov_rate, infer_costs

    costs = infer_costs(plan)
    if not costs:
        return
    rate, source = fov_rate(plan)
    k = plan.ffn.inference.tiles_per_task
    ct = Table(title=f"inference estimate: {k} tile{'s' if k > 1 else ''} per task, {rate:g} FOV/s per task",
               title_justify="left")
    for col in ("job", "tiles", "tasks", "FOVs", "model calls", "GPU-hours"):
        ct.add_column(col)
    for c in costs:
        ct.add_row(c.job, str(c.tiles), str(c.tasks), f"{c.fovs:,.0f}", f"{c.model_calls:,.0f}", f"{c.hours:,.1f}")
    console.print(ct)
    console.print(f"  FOV/s from {source}; FOVs from the tiles' voxels at FIB-25 density (Google FFN's run on "
                  "the reference box, dense neuropil: sparser tissue needs fewer); model calls about FOVs / tiles_per_task")
