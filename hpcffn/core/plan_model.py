"""The plan.json manifest: what `hpcffn plan` decided, read by submit, status and stages.

plan.json is the single source of truth for tiles, groups, resolved parameters and the
scripts that were rendered. Stage commands run with `--plan plan.json --tile T` (or
`--group G`, `--volume V`) and read everything else from here, so a hand-edited script
stays short and a re-plan changes parameters in one place.

All boxes and shapes are z,y,x in voxels of the volume's full coordinates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from hpcffn import PLAN_FORMAT
from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import Layout
from hpcffn.core.params import ConvertSpec, FFNParams, SubvolumeSpec
from hpcffn.core.stage_table import STAGE

ZYX = tuple[int, int, int]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


_setattr = object.__setattr__


def trusted(cls, **values):
    """A model from values hpcffn computed itself, every field given: no validation, no defaults.

    What `model_construct` does, without its per-field walk for aliases and defaults: a third of
    the time, which counts for the 100,000s of tiles and boxes a big plan holds.
    """
    obj = object.__new__(cls)
    _setattr(obj, "__dict__", values)
    _setattr(obj, "__pydantic_fields_set__", set(values))
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None)
    return obj


class Box(_Model):
    """A box of voxels: start (inclusive) and size, both z,y,x."""

    start: ZYX
    size: ZYX

    @property
    def stop(self) -> ZYX:
        return tuple(s + n for s, n in zip(self.start, self.size))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))  # type: ignore[return-value]

    @property
    def voxels(self) -> int:
        z, y, x = self.size
        return z * y * x


class VolumePlan(_Model):
    """One input volume, with the HDF5 locations the stages read after conversion."""

    name: str
    shape: ZYX
    # Where stages read the grayscale and the labelled groundtruth: "path.h5:dataset"
    # (absolute path). Either the user's own HDF5 or workdir/data/<volume>.h5 after convert.
    raw: str
    groundtruth: str | None = None
    # What the user gave (HDF5 location, multi-page TIF or a directory of TIF slices).
    raw_source: str
    groundtruth_source: str | None = None
    mask: str | None = None  # "path.h5:dataset": non-zero voxels are excluded from training
    # white: white background, black objects (objects = connected components);
    # black: zero background, non-zero objects (connected components);
    # labels: ids already assigned, kept as they are.
    polarity: Literal["white", "black", "labels"] = "labels"
    # True when the convert stage must produce `raw`/`groundtruth` before other stages run.
    needs_convert: bool = False
    # How convert maps non-uint8 grayscale to uint8 (none = refuse), and the connectivity
    # that turns white/black groundtruth into object ids.
    rescale: Literal["none", "dtype", "minmax"] = "none"
    connectivity: Literal[6, 18, 26] = 6
    # Convert also writes workdir/data/tiles/<tile>.h5 (raw + stack of each tile's box).
    tile_files: bool = False
    # Size and modification time of the inputs when planned: a replaced input changes what
    # every unit of this volume means (plan/fingerprints.py). None: not there when planned.
    inputs_id: str | None = None


class TilePlan(_Model):
    """One sub-volume. `box` tiles the volume exactly once; `infer_box` adds the overlap."""

    name: str
    volume: str
    index: ZYX
    box: Box
    infer_box: Box
    # The GPU group that trains on this tile; None for tiles of volumes without groundtruth
    # (they are only segmented).
    group: str | None = None


class GroupPlan(_Model):
    """A GPU group: the tiles one training job learns from."""

    name: str
    tiles: list[str]
    voxels: int


class Dependency(_Model):
    job: str
    type: Literal["afterok", "aftercorr", "afterany"] = "afterok"


class JobPlan(_Model):
    """One rendered batch script. Array jobs run one task per unit (task id = index)."""

    name: str
    stage: str
    script: str  # relative to the workdir
    sha256: str
    array: bool
    units: list[str]  # volumes, tiles or groups; array task i works on units[i]
    throttle: int | None = None  # the %N of --array
    group: str | None = None
    depends_on: list[Dependency] = Field(default_factory=list)


class _AsWritten(BaseModel):
    """A section of the resolved spec in plan.json, typed where jobs read it.

    A field an older plan.json lacks takes its default and is left out again when the plan is
    written, so every plan.json reads and writes as it was. Keys not declared are kept as written.
    """

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        out = handler(self)
        for key in type(self).model_fields.keys() - self.model_fields_set:
            out.pop(key, None)
        return out


class ClusterPlan(_AsWritten):
    """spec.cluster: the profile, the array limits `hpcffn submit` obeys and (as further keys,
    one per stage, for people and the plan summary) the SLURM resources each stage asked for."""

    profile: str = "generic"
    # The spec's own limits (they win over what SLURM says at submit) and the profile's.
    max_array_size: int | None = None
    max_submit_jobs: int | None = None
    profile_max_array_size: int | None = None
    profile_max_submit_jobs: int | None = None

    def array_limits(self, slurm_size: int | None = None,
                     slurm_submit: int | None = None) -> tuple[int | None, int | None, str | None]:
        """(MaxArraySize, MaxSubmitJobs, where the size came from): the spec's own, else what SLURM
        says (submit asks it; the planner cannot), else the profile's. Sources: "spec", "slurm",
        "profile"; None with no size anywhere."""
        submit = self.max_submit_jobs or slurm_submit or self.profile_max_submit_jobs
        for size, source in ((self.max_array_size, "spec"), (slurm_size, "slurm"), (self.profile_max_array_size, "profile")):
            if size:
                return size, submit, source
        return None, submit, None

    def resources(self, stage: str) -> dict:
        """The resources a stage asked for, as written (unset ones left out)."""
        return (self.model_extra or {}).get(stage) or {}


class PlanSpec(_AsWritten):
    """plan.json's `spec`: the spec with every default filled in, in the spec's key order.

    Jobs read `subvolume`, `convert` and `cluster`, typed with the spec's own models; the other
    sections are recorded for people (and fingerprints) as plain JSON.
    """

    name: str = ""
    workdir: str = ""
    volumes: list[dict] = Field(default_factory=list)
    subvolume: SubvolumeSpec = SubvolumeSpec()
    convert: ConvertSpec = ConvertSpec()  # absent (unset) in plans made before convert.clahe
    ffn: dict = Field(default_factory=dict)
    cluster: ClusterPlan = ClusterPlan()
    container: dict = Field(default_factory=dict)
    stages: list[str] | None = None
    templates: str | None = None


class Plan(_Model):
    format: int = PLAN_FORMAT
    hpcffn_version: str
    # A hash of this plan.json, also written into units/plan.head.json: a task refuses to run
    # when the two differ (a `hpcffn plan` interrupted between them). "" before it is written.
    plan_id: str = ""
    name: str
    workdir: str
    spec_file: str
    spec: PlanSpec  # the resolved spec (every default filled in)
    ffn: FFNParams
    volumes: list[VolumePlan]
    tiles: list[TilePlan]
    groups: list[GroupPlan]
    jobs: list[JobPlan]

    # ----- lookups used by stages and submit -----
    @property
    def layout(self) -> Layout:
        return Layout(self.workdir)

    def volume(self, key: str | int) -> VolumePlan:
        return _find(self.volumes, key, "volume", self.spec_file)

    def tile(self, key: str | int) -> TilePlan:
        return _find(self.tiles, key, "tile", self.spec_file)

    def group(self, key: str | int) -> GroupPlan:
        return _find(self.groups, key, "group", self.spec_file)

    def job(self, name: str) -> JobPlan:
        return _find(self.jobs, name, "job", self.spec_file)

    def task_unit(self, job_name: str, key: str | int) -> str | int:
        """The unit an array task works on: an index is a position in the job's `units`.

        Rendered array scripts pass $SLURM_ARRAY_TASK_ID, which is the position in the job's
        units (partitions: tiles with a group; convert: volumes that need converting). Names
        pass through unchanged; without such a job in the plan the index is kept as it is.
        """
        if not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
            return key
        job = next((j for j in self.jobs if j.name == job_name), None)
        if job is None or not job.units:
            return key
        i = int(key)
        if not 0 <= i < len(job.units):
            raise HpcffnError(
                f"task index {i} is out of range: job {job_name} of the plan of {self.spec_file} has "
                f"{len(job.units)} tasks (0..{len(job.units) - 1}); re-run `hpcffn plan` if the spec changed"
            )
        return job.units[i]

    @property
    def consensus(self) -> bool:
        """Whether each tile's segmentation is the consensus of a forward and a reverse pass."""
        return self.ffn.inference.consensus is not None

    def infer_output(self, stage: str, tile: str) -> Path:
        """Where a tile's inference step writes: without consensus the forward pass ("infer")
        writes the tile's segmentation; with it each pass writes its own file and step
        "consensus" writes the tile's segmentation (what joins, stitch and evaluate read)."""
        if stage == "consensus" or not self.consensus:
            return self.layout.segmentation(tile)
        return self.layout.pass_segmentation(tile, STAGE[stage].pass_name)

    def group_tiles(self, group: str) -> list[TilePlan]:
        names = set(self.group(group).tiles)
        return [t for t in self.tiles if t.name in names]


def _find(items, key, what: str, spec_file: str):
    """Look up by name, or by position when `key` is an int or a decimal string (array task id)."""
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        i = int(key)
        if 0 <= i < len(items):
            return items[i]
        raise HpcffnError(
            f"{what} index {i} is out of range: the plan of {spec_file} has {len(items)} {what}s "
            f"(0..{len(items) - 1}); re-run `hpcffn plan` if the spec changed"
        )
    for item in items:
        if item.name == key:
            return item
    known = ", ".join(i.name for i in items[:10]) + (" ..." if len(items) > 10 else "")
    raise HpcffnError(f"no {what} named {key!r} in the plan of {spec_file}; known: {known}")


def load_plan(path: str | Path, tiles: bool = True) -> Plan:
    """Read plan.json (or the plan.json inside a directory) with one-line errors.

    tiles=False leaves `tiles` empty (not validated): for readers that need only the jobs, such
    as `hpcffn status`, to which 100,000 tile records are most of the loading time.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "plan.json"
    if not p.is_file():
        raise HpcffnError(f"no plan at {p}: run `hpcffn plan SPEC.yaml` first, or pass the workdir")
    try:
        text = p.read_text()
        raw = _without_tiles(text) if not tiles else None
        if raw is None:
            raw = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HpcffnError(f"{p} is not readable JSON ({exc}); re-run `hpcffn plan`") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt != PLAN_FORMAT:
        raise HpcffnError(
            f"{p} has plan format {fmt!r} but this hpcffn reads format {PLAN_FORMAT}: "
            "re-run `hpcffn plan SPEC.yaml` with this version"
        )
    if not tiles and isinstance(raw.get("tiles"), list):
        raw["tiles"] = []
    try:
        return Plan.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise HpcffnError(f"{p}: field {where}: {err['msg']}; re-run `hpcffn plan`") from None


def _without_tiles(text: str) -> dict | None:
    """plan.json parsed without its tile records, which are most of it (None: parse it whole).

    In the layout `write_plan` writes (indent 1), a line that starts with one space and a quote
    is a top-level key, and `tiles` is followed by `groups`: the text between is cut out unread.
    """
    start = text.find('\n "tiles": [')
    end = text.find('\n "groups": ', start) if start >= 0 else -1
    if end < 0:
        return None
    try:
        raw = json.loads(text[:start] + '\n "tiles": [],' + text[end:])
    except json.JSONDecodeError:
        return None
    return raw if isinstance(raw, dict) else None


def write_plan(plan: Plan, path: str | Path) -> None:
    """Write plan.json atomically (temp file + rename)."""
    from hpcffn.core.atomic import atomic_write_text

    atomic_write_text(Path(path), plan.model_dump_json(indent=1))
