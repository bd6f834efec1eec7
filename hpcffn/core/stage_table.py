"""Every stage's facts in one table: what a task works on, what it waits for, how it runs.

The planner (units, dependencies, requeue flags, which stages apply), the script renderer
(its template context), the spec (the names `stages:` accepts), `submit`/`status` filters,
`check`'s probe (packages) and the CLI (the early signal handler) all read this table, so a
stage's facts are written once. A new stage is one row here, its template
(templates/<name>.sbatch.j2), its `hpcffn stage <name>` command and its fingerprint
(plan/fingerprints.py).

Rows are in job order: the order `hpcffn plan` lists jobs and `submit` submits them. A row
with `part_of` is a step of a spec stage (the `stages:` entry and `cluster.<stage>` resources
it belongs to): with ffn.inference.consensus, infer runs as infer, reverse, consensus; stitch
always runs as joins, resolve, relabel, pyramid.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Stage:
    """One stage (or step of a stage) and what the rest of hpcffn needs to know about it."""

    name: str
    # What one task works on: a volume, a tile, a group, a pyramid block or the whole experiment.
    unit: str
    # Stages its jobs wait for (afterok). A stage that is not planned is skipped in favour of what
    # it waits for itself (plan/planner.py plan_jobs; docs/CONTRACTS.md's dependency table).
    after: tuple[str, ...] = ()
    # The spec stage it is a step of; None: a spec stage itself.
    part_of: str | None = None
    # The spec stage whose cluster.<stage> resources its jobs get; None: the one it belongs to.
    resources_of: str | None = None
    # Saves a checkpoint on USR1/TERM and is requeued at its time limit (--signal, --requeue).
    requeues: bool = False
    # Applies only when some volume has groundtruth (it trains on it or scores against it).
    needs_groundtruth: bool = False
    # Cuts training examples (FOV plus moves) out of tiles, so tiles must hold FOV + 2 x margin.
    cuts_examples: bool = False
    # An inference pass, by its `hpcffn stage infer --pass` name: a task may segment several tiles
    # (ffn.inference.tiles_per_task; core/bundles.py) and leaves a progress file beside each tile's
    # output (`status` reads it); with ffn.inference.consensus each pass writes its own file.
    pass_name: str | None = None
    # Imports beyond the base install; `hpcffn check` probes them on the job's node.
    packages: tuple[str, ...] = ()
    # False: a command (`hpcffn stage stitch`) that runs no job of its own; its steps do.
    planned: bool = True

    @property
    def spec_stage(self) -> str:
        """Its `stages:` name."""
        return self.part_of or self.name

    @property
    def resource_stage(self) -> str:
        return self.resources_of or self.spec_stage

    @property
    def inference_pass(self) -> bool:
        """An inference pass: what pass_name says of a task (bundles, progress files)."""
        return self.pass_name is not None

    @property
    def tensorflow(self) -> bool:
        """Its row lists TensorFlow; whether a plan's jobs run it is runs_tensorflow's (joins: only
        with ffn.stitch.resegment)."""
        return "tensorflow" in self.packages


_INFER_PACKAGES = ("h5py", "tensorflow", "scipy", "skimage", "edt")

TABLE: tuple[Stage, ...] = (
    Stage("convert", "volume", packages=("h5py", "tifffile", "cc3d")),
    Stage("partitions", "tile", after=("convert",), needs_groundtruth=True, packages=("h5py", "scipy")),
    Stage("coordinates", "group", after=("partitions",), needs_groundtruth=True, cuts_examples=True,
          packages=("h5py",)),
    Stage("train", "group", after=("coordinates",), requeues=True, needs_groundtruth=True, cuts_examples=True,
          packages=("h5py", "tensorflow")),
    Stage("infer", "tile", after=("train", "convert"), requeues=True, pass_name="forward", packages=_INFER_PACKAGES),
    # The same group's forward array (plan_jobs); runs as `hpcffn stage infer --pass reverse`.
    Stage("reverse", "tile", after=("infer",), part_of="infer", requeues=True, pass_name="reverse",
          packages=_INFER_PACKAGES),
    # numpy over a tile's two segmentations: stitch's CPU resources, not the passes' GPUs.
    Stage("consensus", "tile", after=("reverse",), part_of="infer", resources_of="stitch", packages=("h5py",)),
    # TensorFlow for ffn.stitch.resegment's fills (on by default); resegment: false needs none (runs_tensorflow).
    Stage("joins", "tile", after=("consensus",), part_of="stitch", packages=("h5py", "scipy", "tensorflow")),
    Stage("resolve", "volume", after=("joins",), part_of="stitch", packages=("h5py", "scipy", "zarr")),
    Stage("relabel", "tile", after=("resolve",), part_of="stitch", packages=("h5py", "zarr")),
    # pyramid_s<k> waits for pyramid_s<k-1> instead, past the first level (plan_jobs).
    Stage("pyramid", "block", after=("relabel",), part_of="stitch", packages=("zarr",)),
    # Single-task stitch of a volume into stitch/<volume>.h5; a plan runs the steps above instead.
    Stage("stitch", "volume", packages=("h5py", "scipy"), planned=False),
    Stage("evaluate", "experiment", after=("relabel",), needs_groundtruth=True,
          packages=("h5py", "scipy", "skimage")),
)

STAGE: MappingProxyType[str, Stage] = MappingProxyType({s.name: s for s in TABLE})

# Job stages, in job order.
STAGES: tuple[str, ...] = tuple(s.name for s in TABLE if s.planned)
# The stages a spec's `stages:` names, in job order.
SPEC_STAGES: tuple[str, ...] = tuple(dict.fromkeys(s.spec_stage for s in TABLE))


def steps_of(spec_stage: str) -> tuple[str, ...]:
    """The job stages a spec stage runs as, in order (a stage without steps: itself)."""
    return tuple(s.name for s in TABLE if s.planned and s.spec_stage == spec_stage) or (spec_stage,)


# The inference passes' job stages: the forward pass, then (ffn.inference.consensus) the reverse one.
INFERENCE_PASSES: tuple[str, ...] = tuple(s.name for s in TABLE if s.inference_pass)
# `hpcffn stage infer --pass` names and the job stage each runs as.
PASS_STAGE: MappingProxyType[str, str] = MappingProxyType({s.pass_name: s.name for s in TABLE if s.pass_name})

STITCH_STEPS = steps_of("stitch")
# Spec stage infer with ffn.inference.consensus on: the forward pass (job stage "infer"), then these.
CONSENSUS_STEPS = steps_of("infer")[1:]


def resource_stage(stage: str) -> str:
    """The spec stage whose cluster.<stage> resources a job of `stage` gets."""
    return STAGE[stage].resource_stage if stage in STAGE else stage


def runs_tensorflow(stage: str, resegment: bool) -> bool:
    """Whether a plan's jobs of `stage` run TensorFlow (their script keeps TF's start-up notices out
    of the log, their probe checks GPUs): its row lists it, except joins with ffn.stitch.resegment
    off, which join by the overlap's counts alone and load no checkpoint (stages/resegment.py)."""
    return STAGE[stage].tensorflow and (stage != "joins" or resegment)


def packages(stage: str, resegment: bool = True) -> tuple[str, ...]:
    """What `hpcffn stage <stage>` imports beyond the base install (none for a name not here);
    TensorFlow only where runs_tensorflow says a plan with this ffn.stitch.resegment runs it."""
    if stage not in STAGE:
        return ()
    return tuple(p for p in STAGE[stage].packages if p != "tensorflow" or runs_tensorflow(stage, resegment))


# The stages' packages that the base install (pyproject's dependencies) brings: a login node has them.
BASE_PACKAGES = ("h5py", "tifffile", "zarr")
# Imported only by stage code (the `ffn` extra): a base install that misses one says which extra brings it.
EXTRA_PACKAGES: frozenset[str] = frozenset(p for s in TABLE for p in s.packages) - set(BASE_PACKAGES)


def expand_stages(names: list[str] | None) -> list[str] | None:
    """`--stage stitch` means all of its steps; `--stage infer` the consensus steps too."""
    if not names:
        return names
    return list(dict.fromkeys(s for n in names for s in steps_of(n)))
