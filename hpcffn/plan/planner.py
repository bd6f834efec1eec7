"""spec -> Plan: resolve inputs and shapes, tile, group, choose jobs, render their scripts.

The steps stay visible: `load_spec` (spec.py) -> `resolve_volumes` -> `grid.tile_volume` /
`grid.deal_groups` -> `plan_jobs` -> `render_scripts` (render.py templates). `make_plan`
returns everything `hpcffn plan` writes, without writing it, so `--dry-run` and `validate`
share the same checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hpcffn import __version__
from hpcffn.core.bundles import bundle_name, bundles
from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import Layout
from hpcffn.core.params import FFNParams
from hpcffn.core.plan_model import ClusterPlan, Dependency, JobPlan, Plan, VolumePlan
from hpcffn.core.pretrained import pretrained
from hpcffn.core.stage_table import (
    INFERENCE_PASSES,
    SPEC_STAGES,
    STAGE,
    STAGES,
    resource_stage,
    runs_tensorflow,
)
from hpcffn.io.ome_zarr import pyramid_units
from hpcffn.io.sources import Source, classify, read_shape
from hpcffn.plan import container as containers
from hpcffn.plan import grid
from hpcffn.plan.cost import task_memory
from hpcffn.plan.limits import DEFAULT_SIGNAL_GRACE, check_resources, warn_infer_memory
from hpcffn.plan.resources import profiles_dir
from hpcffn.plan.spec import (
    Spec,
    StageResources,
    _safe_path,
    load_profile,
    load_spec,
    resources_as_set,
    stage_resources,
)


@dataclass
class Planned:
    """Everything a plan run produces, before anything is written."""

    plan: Plan
    scripts: dict[str, str]  # relative script path -> content
    resolved_yaml: str
    warnings: list[str] = field(default_factory=list)
    # Renders more jobs with this plan's settings (used by benchmarks to compare layouts).
    render_jobs: Callable[[list[JobPlan]], dict[str, str]] | None = None


def _abs(base: Path, text: str) -> str:
    p = Path(text).expanduser()
    return os.path.normpath(p if p.is_absolute() else base / p)


def _fail(spec_path: Path, where: str, problem: str) -> HpcffnError:
    return HpcffnError(f"{spec_path}: field {where}: {problem}")


# ---------------------------------------------------------------- volumes


def resolve_volumes(spec: Spec, spec_path: Path, base: Path, layout: Layout,
                    warnings: list[str]) -> tuple[list[VolumePlan], list[dict], list[str]]:
    """VolumePlans (needs_convert first), the resolved volume entries and the input folders."""
    plans, resolved, folders = [], [], []
    inputs: list[tuple[str, Source]] = []  # (spec field, source) of every volume's every input
    for i, vol in enumerate(spec.volumes):
        where = f"volumes.{i}"
        raw = _source(vol.raw, "raw", base, spec_path, f"{where}.raw")
        gt = _source(vol.groundtruth, "stack", base, spec_path, f"{where}.groundtruth") if vol.groundtruth else None
        polarity = vol.polarity or ("labels" if gt is not None and gt.kind == "hdf5" else "white")
        shape = _shape(raw, vol.shape, spec_path, f"{where}.raw", warnings)
        if gt is not None:
            _same_shape(gt, vol.shape, shape, spec_path, f"{where}.groundtruth", "groundtruth", warnings)
        mask = _source(vol.mask, "mask", base, spec_path, f"{where}.mask") if vol.mask else None
        if mask is not None:
            if mask.kind != "hdf5":
                raise _fail(spec_path, f"{where}.mask", "must be HDF5 (path.h5:dataset); turn TIF slices into one "
                            "with `hpcffn convert --raw MASK_TIFS --output mask.h5` and give mask.h5:raw")
            _same_shape(mask, vol.shape, shape, spec_path, f"{where}.mask", "the mask", warnings)
        inputs += [(f"{where}.{name}", src) for name, src in (("raw", raw), ("groundtruth", gt), ("mask", mask))
                   if src is not None]
        converted = str(layout.converted_volume(vol.name))
        raw_loc = raw.location if raw.kind == "hdf5" else f"{converted}:raw"
        gt_loc = None
        if gt is not None:
            gt_loc = gt.location if (gt.kind == "hdf5" and polarity == "labels") else f"{converted}:stack"
        needs_convert = raw_loc.startswith(converted + ":") or bool(gt_loc and gt_loc.startswith(converted + ":"))
        if vol.tile_files and not needs_convert:
            warnings.append(f"{where}.tile_files: {vol.name} is HDF5 read in place, so no convert job runs "
                            "and no tile files are written; drop tile_files or give TIF inputs")
        plans.append(VolumePlan(
            name=vol.name, shape=shape, raw=raw_loc, groundtruth=gt_loc, raw_source=raw.location,
            groundtruth_source=gt.location if gt else None, polarity=polarity, needs_convert=needs_convert,
            rescale=vol.rescale, connectivity=vol.connectivity, tile_files=vol.tile_files,
            mask=mask.location if mask else None, inputs_id=inputs_identity([raw, gt, mask]),
        ))
        folders += [str(s.path if s.kind == "tifdir" else s.path.parent) for s in (raw, gt, mask) if s is not None]
        resolved.append({"name": vol.name, "raw": raw.location, "groundtruth": gt.location if gt else None,
                         "polarity": polarity, "shape": list(shape), "rescale": vol.rescale,
                         "connectivity": vol.connectivity, "tile_files": vol.tile_files,
                         "mask": mask.location if mask else None})
    refuse_convert_over_any_input(plans, inputs, layout, spec_path)
    # Convert's array task i is plan.volumes[i]: volumes that need converting come first.
    order = sorted(range(len(plans)), key=lambda i: not plans[i].needs_convert)
    return [plans[i] for i in order], resolved, folders


def inputs_identity(sources: list[Source | None]) -> str | None:
    """A short hash of the inputs' sizes and modification times (None while one is missing).

    A replaced or rewritten input changes it, and with it what every unit of the volume means.
    """
    import hashlib

    parts = []
    for src in sources:
        if src is None:
            continue
        if not src.exists:
            return None
        if src.kind == "tifdir":
            with os.scandir(src.path) as entries:
                stats = sorted((e.name, e.stat()) for e in entries if e.is_file())
            parts.append([str(src.path), [(n, st.st_size, st.st_mtime_ns) for n, st in stats]])
        else:
            st = os.stat(src.path)
            parts.append([src.location, st.st_size, st.st_mtime_ns])
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def refuse_convert_over_any_input(volumes: list[VolumePlan], inputs: list[tuple[str, Source]], layout: Layout,
                                  spec_path: Path) -> None:
    """No volume's input (of any volume) may be where convert writes, nor a file there that hpcffn did not write.

    Convert replaces data/<volume>.h5 whole: the user's datasets in it would be lost.
    """
    from hpcffn.io.ownership import same_file, written_by_hpcffn

    for v in volumes:
        if not v.needs_convert:
            continue
        target = layout.converted_volume(v.name)
        for where, src in inputs:
            if same_file(src.path, target):
                raise _fail(spec_path, where, f"{src.path} is the file convert writes volume {v.name}'s converted "
                            "data to, and it would replace the file (and every dataset in it); move your input "
                            "out of the workdir's data/ folder or rename the volume")
        if target.is_file() and not written_by_hpcffn(target, layout.marker("convert", v.name)):
            raise _fail(spec_path, "workdir", f"{target} exists and was not written by hpcffn, but convert writes "
                        f"volume {v.name} there and would replace it whole; move that file out of the workdir's "
                        "data/ folder (or give it as an input from elsewhere)")


def _source(text: str, default_dataset: str, base: Path, spec_path: Path, where: str) -> Source:
    try:
        return classify(text, default_dataset, base)
    except (ValueError, HpcffnError) as exc:
        raise _fail(spec_path, where, f"{exc}; fix the path") from None


def _same_shape(src: Source, declared, raw_shape, spec_path: Path, where: str, what: str, warnings: list[str]) -> None:
    """An input beside raw (groundtruth, mask) must cover the same voxels."""
    got = _shape(src, declared, spec_path, where, warnings)
    if got != raw_shape:
        raise _fail(spec_path, where, f"shape {got} differs from the raw shape {raw_shape}; "
                    f"{what} must cover the same voxels as raw")


def _shape(src: Source, declared, spec_path: Path, where: str, warnings: list[str]) -> tuple[int, int, int]:
    if src.exists:
        try:
            shape = read_shape(src)
        except HpcffnError as exc:
            raise _fail(spec_path, where, str(exc)) from None
        if declared is not None and tuple(declared) != tuple(shape):
            raise _fail(spec_path, where.rsplit(".", 1)[0] + ".shape",
                        f"declared {tuple(declared)} but {src.location} has shape {shape} (z,y,x); fix or remove shape")
        return shape
    if declared is None:
        what = "directory" if src.kind == "tifdir" else "file"
        raise _fail(spec_path, where, f"{what} {src.path} does not exist; fix the path, or declare "
                    f"{where.rsplit('.', 1)[0]}.shape (z,y,x) to plan before the data is copied")
    warnings.append(f"{where}: {src.path} does not exist yet; planned with the declared shape {tuple(declared)}")
    return tuple(declared)  # type: ignore[return-value]


# ---------------------------------------------------------------- checks


def required_tile(spec: Spec) -> tuple[int, int, int]:
    """z,y,x: the smallest tile that holds the FOV plus the coordinate margin on both sides."""
    fov = tuple(reversed(spec.ffn.model.fov_size))  # fov_size is x,y,z
    margin = spec.ffn.coordinates.margin  # z,y,x
    return tuple(f + 2 * m for f, m in zip(fov, margin))  # type: ignore[return-value]


def cuts_examples(stages: list[str]) -> bool:
    """Whether a planned stage cuts training examples (FOV + moves) out of tiles; inference only needs
    the tile plus its overlap, so an inference-only plan may use tiles smaller than FOV + 2 x margin."""
    return any(STAGE[s].cuts_examples for s in stages)


def check_model_fits(spec: Spec, spec_path: Path, stages: list[str]) -> None:
    """Margin and tile size against FOV + moves, where training examples are cut from tiles."""
    if not cuts_examples(stages):
        return
    fov = tuple(reversed(spec.ffn.model.fov_size))
    deltas = tuple(reversed(spec.ffn.model.deltas))
    margin = spec.ffn.coordinates.margin
    need_margin = tuple(f // 2 + d for f, d in zip(fov, deltas))
    if any(m < n for m, n in zip(margin, need_margin)):
        raise _fail(spec_path, "ffn.coordinates.margin", f"{margin} (z,y,x) is smaller than the FOV radius plus deltas "
                    f"{need_margin} (z,y,x, from ffn.model.fov_size and deltas, which are x,y,z); raise the margin")
    need = required_tile(spec)
    size = spec.subvolume.size
    if any(s < n for s, n in zip(size, need)):
        raise _fail(spec_path, "subvolume.size", f"{size} (z,y,x) cannot hold the FOV plus 2 x margin = {need} (z,y,x, "
                    "from ffn.model.fov_size and ffn.coordinates.margin); make the sub-volume larger or the FOV/margin smaller")


def check_tiles(tiles, need, trained: set[str], spec_path: Path) -> None:
    nz, ny, nx = need
    for t in tiles:
        z, y, x = t.box.size
        if (z < nz or y < ny or x < nx) and t.volume in trained:
            raise _fail(spec_path, "subvolume.min_edge", f"tile {t.name} is {t.box.size} (z,y,x), smaller than FOV plus 2 x margin "
                        f"{need}; raise min_edge so edge remainders merge, or check the volume's shape")


def check_overlap(tiles, overlap, spec_path: Path) -> None:
    """Tiles meet only where their inference boxes overlap: with no overlap along an axis that is cut
    into several tiles, stitching has no shared voxels to join the objects crossing those faces."""
    cut = {a for t in tiles for a in range(3) if t.index[a] > 0}
    flat = [a for a in sorted(cut) if overlap[a] < 1]
    if flat:
        axes = " and ".join("zyx"[a] for a in flat)
        raise _fail(spec_path, "subvolume.overlap", f"{list(overlap)} (z,y,x) is 0 along {axes}, where the volume is "
                    "cut into several tiles: stitching then cannot join objects that cross the tiles' faces; give "
                    "at least 1 voxel there (the minimum), better the FOV radius or more (default 32)")


# Full class balancing gives about 3 records per labelled voxel (500^3: 382.5 M records,
# 4.6 GB; docs/data_stages.md), ~12 bytes each gzipped.
RECORDS_PER_VOXEL = 3
UNCAPPED_WARNING_RECORDS = 1_000_000_000


def warn_uncapped_coordinates(stages: list[str], groups, ffn: FFNParams, warnings: list[str]) -> None:
    """A group's coordinate file without max_records can reach hundreds of GB: say so at plan time."""
    if "coordinates" not in stages or ffn.coordinates.max_records is not None or not groups:
        return
    big = max(groups, key=lambda g: g.voxels)
    records = RECORDS_PER_VOXEL * big.voxels
    if records >= UNCAPPED_WARNING_RECORDS:
        warnings.append(
            f"ffn.coordinates.max_records is not set: group {big.name} ({big.voxels / 1e9:.1f} G voxels) may get "
            f"~{records / 1e9:.0f} G coordinate records (~{records * 12 / 1e9:.0f} GB); training reads max_steps x "
            f"batch_size = {ffn.training.max_steps * ffn.training.batch_size:,} examples, so a cap such as "
            f"{max(10 * ffn.training.max_steps * ffn.training.batch_size, 1_000_000):,} still gives every example a fresh record")


# ---------------------------------------------------------------- jobs


def applicable_stages(volumes: list[VolumePlan]) -> list[str]:
    has_gt = any(v.groundtruth for v in volumes)
    out = []
    for s in SPEC_STAGES:
        if s == "convert" and not any(v.needs_convert for v in volumes):
            continue
        if STAGE[s].needs_groundtruth and not has_gt:
            continue
        out.append(s)
    return out


def choose_stages(spec: Spec, volumes: list[VolumePlan], spec_path: Path, warnings: list[str]) -> list[str]:
    possible = applicable_stages(volumes)
    if spec.stages is None:
        return possible
    for s in spec.stages:
        if s not in possible:
            why = "no volume needs converting (HDF5 inputs with polarity labels)" if s == "convert" \
                else "no volume has groundtruth"
            raise _fail(spec_path, "stages", f"{s!r} does not apply: {why}; remove it from stages")
    return [s for s in SPEC_STAGES if s in spec.stages]


def _task_units(tiles: list[str], k: int) -> list[str]:
    """An infer (or reverse) array's units: its tiles, or with tiles_per_task K > 1 runs of K tiles
    (core/bundles.py)."""
    return tiles if k <= 1 else [bundle_name(b) for b in bundles(tiles, k)]


def plan_jobs(stages: list[str], volumes, tiles, groups, tile_size=None, consensus: bool = False,
              tiles_per_task: int = 1) -> list[JobPlan]:
    """Jobs (without script hashes yet) in submission order, with afterok dependencies.

    `consensus` (ffn.inference.consensus): each forward infer array gets a reverse array over the
    same tiles, and one consensus array over all tiles follows them. `tiles_per_task`: tasks of
    the infer and reverse arrays segment that many tiles each."""
    names_by_stage: dict[str, list[str]] = {}
    jobs: list[JobPlan] = []

    def add(name, stage, array, units, group=None):
        jobs.append(JobPlan(name=name, stage=stage, script=f"jobs/{stage}/{name}.sbatch", sha256="", array=array,
                            units=units, group=group))
        names_by_stage.setdefault(stage, []).append(name)

    for stage in stages:
        if stage == "convert":
            add("convert", stage, True, [v.name for v in volumes if v.needs_convert])
        elif stage == "partitions":
            add("partitions", stage, True, [t.name for t in tiles if t.group])
        elif STAGE[stage].unit == "group":  # coordinates, train: one job per group
            for g in groups:
                add(f"{stage}_{g.name}", stage, False, [g.name], g.name)
        elif stage == "infer":
            # One array per group, each waiting only for its own group's training (below);
            # tiles without a group (volumes without groundtruth) in one more array.
            by_group: dict[str | None, list[str]] = {}
            for t in tiles:  # one pass, not one per group
                by_group.setdefault(t.group or None, []).append(t.name)
            rest = by_group.get(None, [])
            for step in INFERENCE_PASSES if consensus else INFERENCE_PASSES[:1]:
                for g in groups:
                    add(f"{step}_{g.name}", step, True, _task_units(by_group.get(g.name, []), tiles_per_task), g.name)
                if rest or not groups:
                    add(f"{step}_ungrouped" if groups else step, step, True, _task_units(rest, tiles_per_task))
            if consensus:
                add("consensus", "consensus", True, [t.name for t in tiles])
        elif stage == "stitch":  # the steps of docs/stitch.md
            add("joins", "joins", True, [t.name for t in tiles])
            add("resolve", "resolve", True, [v.name for v in volumes])
            add("relabel", "relabel", True, [t.name for t in tiles])
            per_volume = [pyramid_units(v.name, v.shape, tile_size) for v in volumes]
            for level in range(max(map(len, per_volume), default=0)):
                add(f"pyramid_s{level + 1}", "pyramid", True, [u for p in per_volume if level < len(p) for u in p[level]])
        elif stage == "evaluate":
            add("evaluate", stage, False, ["experiment"])

    def deps_of(stage: str) -> list[str]:
        """What `stage` waits for (core/stage_table.py, docs/CONTRACTS.md's dependency table)."""
        out: list[str] = []
        for d in STAGE[stage].after:
            out += [d] if d in names_by_stage else deps_of(d)  # skip stages not planned
        return list(dict.fromkeys(out))

    for job in jobs:
        targets: list[str] = []
        for d in deps_of(job.stage):
            names = names_by_stage[d]
            if job.group and STAGE[d].unit == "group":
                names = [n for n in names if n.endswith(f"_{job.group}")]
            elif job.stage == "infer" and d == "train" and names:
                names = names[:1]  # ungrouped tiles are segmented with the first group's model
            elif job.stage == "reverse" and d == "infer":
                names = ["infer" + job.name[len("reverse"):]]  # the forward array of the same tiles
            targets += names
        if job.stage == "pyramid" and job.name != "pyramid_s1":
            targets = [f"pyramid_s{int(job.name.rpartition('_s')[2]) - 1}"]
        job.depends_on = [Dependency(job=n) for n in targets]
    return jobs


def array_limits(cluster, profile) -> ClusterPlan:
    """The resolved spec's limits: the spec's own (submit prefers them to what SLURM says) and the profile's."""
    return ClusterPlan(max_array_size=cluster.max_array_size, max_submit_jobs=cluster.max_submit_jobs,
                       profile_max_array_size=profile.max_array_size, profile_max_submit_jobs=profile.max_submit_jobs)


def warn_array_limits(jobs: list[JobPlan], limits: ClusterPlan, profile: str, warnings: list[str]) -> None:
    """Say at plan time which arrays the cluster's MaxArraySize/MaxSubmitJobs will not take whole."""
    size, submit, source = limits.array_limits()
    where = "the spec's cluster" if source == "spec" else f"profile {profile}"
    for job in jobs:
        if job.array and size and len(job.units) > size:
            warnings.append(f"job {job.name} has {len(job.units):,} tasks, more than MaxArraySize {size:,} of {where}: "
                            f"`hpcffn submit` splits it into {-(-len(job.units) // size)} arrays (set "
                            "cluster.max_array_size if your cluster's limit differs)")
    total = sum(len(j.units) for j in jobs)
    if submit and total > submit:
        warnings.append(f"the plan has {total:,} tasks in all, more than MaxSubmitJobs {submit:,}: SLURM refuses "
                        "submissions beyond it; submit part with --stage/--group, then the rest with --resume")


# ---------------------------------------------------------------- rendering


# Resource keys of a stage (spec/profile) and the sbatch option each becomes, in script order.
_SBATCH_OPTIONS = (
    ("partition", "partition"), ("account", "account"), ("qos", "qos"), ("constraint", "constraint"),
    ("gpus", "gres"), ("cpus", "cpus-per-task"), ("memory", "mem"), ("time", "time"),
    ("mail_user", "mail-user"), ("mail_type", "mail-type"),
)


def sbatch_lines(spec: Spec, job: JobPlan, res: StageResources, layout: Layout, throttle: int | None) -> list[str]:
    """The #SBATCH options of one job, in a fixed order."""
    log = "%x_%A_%a.out" if job.array else "%x_%j.out"
    lines = [f"--job-name={spec.name}-{job.name}", f"--output={layout.logs_dir(job.stage)}/{log}", "--open-mode=append"]
    for key, opt in _SBATCH_OPTIONS:
        if value := getattr(res, key):
            value = f"gpu:{value}" if key == "gpus" else value
            lines.append(f"--{opt}={value}")
    if job.array:
        lines.append(f"--array=0-{len(job.units) - 1}" + (f"%{throttle}" if throttle else ""))
    if STAGE[job.stage].requeues:
        lines.append(f"--signal=B:USR1@{res.signal_grace or DEFAULT_SIGNAL_GRACE}")
        lines.append("--requeue")
    lines += res.extra_sbatch or []
    return lines


def render_scripts(spec: Spec, jobs: list[JobPlan], resources: dict[str, StageResources], layout: Layout,
                   binds: list[str], template_dir: Path | None) -> dict[str, str]:
    """Render every job's script and record its sha256 in the job."""
    from hpcffn.plan.render import environment, render, sha256

    env = environment(template_dir)
    scripts: dict[str, str] = {}
    for job in jobs:
        res = resources[job.stage]
        facts = STAGE[job.stage]
        gpu = bool(res.gpus)
        throttle = spec.subvolume.array_throttle if job.array else None
        job.throttle = throttle
        context = {
            "version": __version__,
            "experiment": spec.name,
            "job": job.name,
            "stage": job.stage,
            "unit_kind": facts.unit,
            "template": f"{job.stage}.sbatch.j2",
            "script_name": Path(job.script).name,
            "array": job.array,
            "units": job.units,
            "group": job.group,
            "sbatch": sbatch_lines(spec, job, res, layout, throttle),
            "workdir": str(layout.root),
            "runtime": spec.container.runtime,
            "image": spec.container.image or "",
            "binds": ",".join(binds),
            "hpcffn": containers.shell_array(spec.container, binds, gpu),
            "modules": res.modules or [],
            "setup": res.setup or [],
            "requeue": facts.requeues,
            "tensorflow": runs_tensorflow(job.stage, spec.ffn.stitch.resegment),
            "signal_grace": res.signal_grace or DEFAULT_SIGNAL_GRACE,
            "depends_on": [d.job for d in job.depends_on],
        }
        text = render(env, f"{job.stage}.sbatch.j2", context)
        job.sha256 = sha256(text)
        scripts[job.script] = text
    return scripts


# ---------------------------------------------------------------- orchestration


def make_plan(spec_path: str | Path, template_dir: str | Path | None = None) -> Planned:
    """Everything `hpcffn plan` would write, computed without writing: spec -> grid -> render."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path)
    base = spec_path.resolve().parent
    warnings: list[str] = []
    workdir = _abs(base, spec.workdir)
    try:
        _safe_path(workdir)
    except ValueError as exc:
        raise _fail(spec_path, "workdir", f"{workdir} {exc}") from None
    layout = Layout(workdir)
    profile, profile_path = load_profile(spec.cluster.profile, base, spec_path)

    # spec -> volumes and checks
    volumes, resolved_volumes, folders = resolve_volumes(spec, spec_path, base, layout, warnings)
    stages = choose_stages(spec, volumes, spec_path, warnings)
    check_model_fits(spec, spec_path, stages)
    # grid
    tiles, groups, min_edge = plan_grid(spec, volumes, spec_path, stages)
    # jobs
    if "convert" not in stages and any(v.needs_convert for v in volumes):
        warnings.append("stages: convert is not planned, so WORKDIR/data/<volume>.h5 must already exist")
    ffn = _resolve_ffn(spec, base)
    if "infer" in stages and not groups and not ffn.inference.checkpoint:
        raise _fail(spec_path, "ffn.inference.checkpoint", "no volume has groundtruth to train on, so inference "
                    "needs a trained model; set ffn.inference.checkpoint")
    warn_uncapped_coordinates(stages, groups, ffn, warnings)
    if spec.convert.clahe.enabled:
        in_place = [v.name for v in volumes if not v.raw.startswith(f"{layout.converted_volume(v.name)}:")]
        if in_place:
            warnings.append(f"convert.clahe applies to grayscale that convert writes; {', '.join(in_place)} "
                            "read their HDF5 raw in place, unequalised (give them as TIF to convert them)")
    if ffn.inference.seed_policy == "invert_origins":
        raise _fail(spec_path, "ffn.inference.seed_policy", "invert_origins seeds at an earlier pass's origins, which "
                    "a plan's first pass does not have; set ffn.inference.consensus to run a reverse pass after it")
    resources = {s: stage_resources(profile, spec.cluster, resource_stage(s)) for s in dict.fromkeys(SPEC_STAGES + STAGES)}
    check_resources(resources, stages, profile.max_time, spec.cluster.profile, spec_path)
    jobs = plan_jobs(stages, volumes, tiles, groups, spec.subvolume.size, consensus=ffn.inference.consensus is not None,
                     tiles_per_task=ffn.inference.tiles_per_task)
    limits = array_limits(spec.cluster, profile)
    warn_array_limits(jobs, limits, spec.cluster.profile, warnings)
    if ffn.inference.tiles_per_task > 1:
        warn_infer_memory(*task_memory(tiles, jobs, ffn.inference.tiles_per_task), resources["infer"], warnings)
    # render
    image, binds = container_setup(spec, base, folders, workdir, spec_path)
    if spec.container.runtime != "none" and image and not Path(image).is_file():
        warnings.append(f"container.image: {image} does not exist yet; build it (apptainer build {image} "
                        "containers/hpcffn.def) before submitting, or every job fails at its start")
    tdir = _template_dir(spec, base, template_dir, spec_path)
    spec_for_render = spec.model_copy(update={"container": spec.container.model_copy(update={"image": image})})

    def render_jobs(some: list[JobPlan]) -> dict[str, str]:
        return render_scripts(spec_for_render, some, resources, layout, binds, tdir)

    scripts = render_jobs(jobs)

    resolved = spec.model_dump(mode="json")
    resolved.update(workdir=workdir, volumes=resolved_volumes, stages=stages, ffn=ffn.model_dump(mode="json"),
                    templates=str(tdir) if tdir else None)
    resolved["subvolume"]["min_edge"] = list(min_edge)
    resolved["container"].update(image=image, binds=binds)
    shipped = profile_path.parent == profiles_dir()
    resolved["cluster"] = {"profile": spec.cluster.profile if shipped else str(profile_path),
                           **limits.model_dump(exclude={"profile"}),
                           **{s: resources_as_set(profile, spec.cluster, s) for s in SPEC_STAGES}}
    plan = Plan(
        hpcffn_version=__version__, name=spec.name, workdir=workdir, spec_file=str(spec_path.resolve()),
        spec=resolved, ffn=ffn, volumes=volumes, tiles=tiles, groups=groups, jobs=jobs,
    )
    return Planned(plan=plan, scripts=scripts, resolved_yaml=_resolved_yaml(resolved), warnings=warnings,
                   render_jobs=render_jobs)


def plan_grid(spec: Spec, volumes: list[VolumePlan], spec_path: Path, stages: list[str]):
    """Tiles (training volumes' first), GPU groups and the effective min_edge.

    Without coordinates/train, edge remainders need only hold one FOV (inference's own minimum).
    """
    need = required_tile(spec)
    min_edge = spec.subvolume.min_edge or (need if cuts_examples(stages) else tuple(reversed(spec.ffn.model.fov_size)))
    trained = {v.name for v in volumes if v.groundtruth}
    tiles = []
    for v in sorted(volumes, key=lambda v: v.name not in trained):  # grouped tiles first (CONTRACTS.md)
        tiles += grid.tile_volume(v.name, v.shape, spec.subvolume.size, min_edge, spec.subvolume.overlap)
    if cuts_examples(stages):
        check_tiles(tiles, need, trained, spec_path)
    check_overlap(tiles, spec.subvolume.overlap, spec_path)
    training_tiles = [t for t in tiles if t.volume in trained]
    groups = []
    if training_tiles:
        if spec.subvolume.groups > len(training_tiles):
            raise _fail(spec_path, "subvolume.groups", f"{spec.subvolume.groups} groups but only {len(training_tiles)} "
                        "training tiles; use at most that many groups")
        groups = grid.deal_groups(training_tiles, spec.subvolume.groups)
    return tiles, groups, min_edge


def container_setup(spec: Spec, base: Path, inputs: list[str], workdir: str,
                    spec_path: Path) -> tuple[str | None, list[str]]:
    """The absolute image path and the bind list (the user's, input folders read-only, the workdir)."""
    c = spec.container
    if c.runtime == "none":
        return (_abs(base, c.image) if c.image else None), []
    if not c.image:
        raise _fail(spec_path, "container.image", f"required with runtime {c.runtime}; give the .sif path "
                    "(build it from containers/hpcffn.def) or set container.runtime: none")
    if c.auto_bind:
        for p in [*inputs, workdir]:
            try:
                _safe_path(p)
            except ValueError as exc:
                raise _fail(spec_path, "container.auto_bind", f"cannot bind {p}: {exc}; set auto_bind: false and list "
                            "container.binds yourself") from None
    user = c.model_copy(update={"binds": [_abs_bind(base, b) for b in c.binds]})
    return _abs(base, c.image), containers.bind_list(user, inputs, [workdir])


def _template_dir(spec: Spec, base: Path, given: str | Path | None, spec_path: Path) -> Path | None:
    """--templates (relative to the current directory) wins over the spec's `templates`."""
    if given:
        tdir, where = Path(os.path.abspath(given)), "--templates"
    elif spec.templates:
        tdir, where = Path(_abs(base, spec.templates)), f"{spec_path}: field templates"
    else:
        return None
    if tdir.exists() and not tdir.is_dir():
        raise HpcffnError(f"{where}: {tdir} is a file, not a directory of *.sbatch.j2 templates; give the directory "
                          "that holds them")
    if not tdir.is_dir():
        raise HpcffnError(f"{where}: template directory {tdir} does not exist; fix the path")
    return tdir


def _resolved_yaml(resolved: dict) -> str:
    import yaml

    text = "# Written by `hpcffn plan`: the spec with every default filled in (for reference).\n"
    return text + yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None, width=100)


def _abs_bind(base: Path, bind: str) -> str:
    """A bind with its host side made absolute against the spec's folder."""
    src, sep, rest = bind.partition(":")
    return _abs(base, src) + sep + rest


def _resolve_ffn(spec: Spec, base: Path):
    ffn = spec.ffn
    train, infer = ffn.training, ffn.inference
    # Paths resolve against the spec's folder; a pretrained model's name (fib25) stays a name.
    if train.init_checkpoint and not pretrained(train.init_checkpoint):
        train = train.model_copy(update={"init_checkpoint": _abs(base, train.init_checkpoint)})
    if infer.checkpoint and not pretrained(infer.checkpoint):
        infer = infer.model_copy(update={"checkpoint": _abs(base, infer.checkpoint)})
    return ffn.model_copy(update={"training": train, "inference": infer})


def check_workdir_owner(planned: Planned, force: bool) -> None:
    """Refuse to re-plan a workdir that belongs to another experiment (unless --force)."""
    from hpcffn.plan.render import previous_head

    path = planned.plan.layout.plan
    if force:
        return
    other = previous_head(planned.plan.layout).get("name")
    if other and other != planned.plan.name:
        raise HpcffnError(f"{path} belongs to experiment {other!r}, not {planned.plan.name!r}; choose another workdir "
                          "in the spec or pass --force")
