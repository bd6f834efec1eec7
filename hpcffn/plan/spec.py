"""The experiment spec (one YAML file): pydantic models, loading and one-line errors.

Unknown keys are errors, so a typo never silently falls back to a default. Every error names
the YAML file, the field path (a.b.c) and the fix. Relative paths resolve against the spec
file's directory (`plan.planner.resolve_volumes`), so a spec works from any current directory.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ConvertSpec, FFNParams, SubvolumeSpec
from hpcffn.core.stage_table import SPEC_STAGES

ZYX = tuple[int, int, int]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The names `stages:` accepts (core/stage_table.py); infer and stitch run as their steps.
StageName = Literal[SPEC_STAGES]  # type: ignore[valid-type]


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v) or len(v) > 100:
        raise ValueError("must start with a letter or digit and hold only letters, digits, '_', '.', '-' (at most 100)")
    return v


Name = Annotated[str, AfterValidator(_name)]


def _volume_name(v: str) -> str:
    # Array tasks look units up by position ("3"), so an all-digit name would read as an index.
    if v.isdigit():
        raise ValueError("must not be all digits (array tasks pass positions as numbers): add a letter, e.g. 'v" + v + "'")
    return v


VolumeName = Annotated[str, AfterValidator(_name), AfterValidator(_volume_name)]


def _safe_path(v: str) -> str:
    """Paths that land in #SBATCH lines or bind lists must survive them unquoted."""
    bad = [c for c in v if c in ",:%\"'\\$`" or c.isspace() or not c.isprintable()]
    if bad:
        raise ValueError(f"contains {bad[0]!r}; SLURM and bind lists cannot hold it: use a path without spaces, quotes, ',', ':', '%', '$' or '\\'")
    return v


SafePath = Annotated[str, AfterValidator(_safe_path)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VolumeSpec(_Strict):
    """One input volume: grayscale and (for training and evaluation) groundtruth."""

    name: VolumeName
    raw: str = Field(description="path.h5[:dataset] (default dataset raw), a .tif stack or a directory of .tif slices")
    groundtruth: str | None = Field(None, description="as raw; default HDF5 dataset stack")
    polarity: Literal["white", "black", "labels"] | None = Field(
        None, description="white: white background, black objects; black: zero background; labels: ids as they are. "
        "Default: labels for HDF5, white for TIF"
    )
    shape: ZYX | None = Field(None, description="z,y,x; lets you plan before the data is on the cluster")
    rescale: Literal["none", "dtype", "minmax"] = Field(
        "none", description="how convert maps non-uint8 grayscale to uint8: none (error), dtype (full dtype range), "
        "minmax (the stack's min..max)"
    )
    connectivity: Literal[6, 18, 26] = Field(
        6, description="3-D connectivity that turns white/black groundtruth into connected-component ids"
    )
    tile_files: bool = Field(
        False, description="convert also writes one HDF5 per tile (raw + stack of its box), as FFN's own scripts expect"
    )
    mask: str | None = Field(
        None, description="path.h5[:dataset] (default dataset mask), same shape: non-zero voxels, and every voxel "
        "whose local-object-mask box reaches one, are excluded from training (FFN's mask_configs); inference "
        "neither seeds nor segments masked voxels"
    )

    @field_validator("shape")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(s < 1 for s in v):
            raise ValueError("every size must be >= 1")
        return v


_WORD = re.compile(r"^[A-Za-z0-9_.@+\-\[\]|&*,:()!]+$")
_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|UNLIMITED|INFINITE)$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_MODULE = re.compile(r"^[A-Za-z0-9_./+\-]+$")
_MAIL_TYPES = {"NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT",
               "TIME_LIMIT", "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS"}

# sbatch options hpcffn writes itself (value: what to set instead), long and short forms.
MANAGED_SBATCH = {
    "array": "it follows the plan's tiles; set subvolume.array_throttle for %N",
    "dependency": "`hpcffn submit` chains the jobs from plan.json",
    "output": "logs go to WORKDIR/logs/<stage>/; change workdir",
    "error": "logs go to WORKDIR/logs/<stage>/; change workdir",
    "job-name": "it is <name>-<job>; change the spec's name",
    "open-mode": "hpcffn appends so requeued jobs keep their log",
    "signal": "set cluster.<stage>.signal_grace",
    "requeue": "train and infer requeue themselves",
    "no-requeue": "train and infer requeue themselves",
    "partition": "set cluster.<stage>.partition",
    "account": "set cluster.<stage>.account",
    "qos": "set cluster.<stage>.qos",
    "constraint": "set cluster.<stage>.constraint",
    "gres": "set cluster.<stage>.gpus",
    "gpus": "set cluster.<stage>.gpus",
    "cpus-per-task": "set cluster.<stage>.cpus",
    "mem": "set cluster.<stage>.memory",
    "time": "set cluster.<stage>.time",
    "mail-user": "set cluster.<stage>.mail_user",
    "mail-type": "set cluster.<stage>.mail_type",
}
_SHORT = {"a": "array", "d": "dependency", "o": "output", "e": "error", "J": "job-name", "p": "partition",
          "A": "account", "q": "qos", "C": "constraint", "G": "gpus", "c": "cpus-per-task", "t": "time"}
_EXTRA = re.compile(r"^--?[A-Za-z][A-Za-z0-9-]*(=[A-Za-z0-9_.@+\-\[\]|&*,:/()!%=]+| [A-Za-z0-9_.@+\-\[\]|&*,:/()!%=]+)?$")


def _extra_line(line: str) -> str:
    text = line.strip()
    if text.startswith("#SBATCH"):
        text = text[len("#SBATCH"):].strip()
    if not _EXTRA.fullmatch(text):
        raise ValueError(f"{line!r} is not one sbatch option like --exclusive or --nodelist=node1 (no spaces, quotes or shell characters)")
    opt = text.lstrip("-").split("=")[0].split(" ")[0]
    key = _SHORT.get(opt, opt) if not text.startswith("--") else opt
    if key in MANAGED_SBATCH:
        raise ValueError(f"{line!r} sets --{key}, which hpcffn manages: {MANAGED_SBATCH[key]}")
    return text


class StageResources(_Strict):
    """SLURM resources of one stage. Unset (null) keeps the profile's value; "" clears it."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description='e.g. "[v100]" or "v100|a100"')
    gpus: int | None = Field(None, ge=0, description="GPUs per task (--gres=gpu:N)")
    cpus: int | None = Field(None, ge=1, description="--cpus-per-task")
    memory: str | None = Field(None, description="--mem, e.g. 64G")
    time: str | None = Field(None, description="--time, e.g. 5-00:00:00")
    mail_user: str | None = None
    mail_type: str | None = Field(None, description="e.g. END,FAIL")
    modules: list[str] | None = Field(None, description="module load ... before the stage")
    setup: list[str] | None = Field(None, description="shell lines run before the stage (e.g. conda activate env)")
    extra_sbatch: list[str] | None = Field(None, description="more #SBATCH options, e.g. --exclusive")
    signal_grace: int | None = Field(None, ge=10, le=65535, description="seconds before the time limit that train/infer checkpoint")

    @field_validator("partition", "account", "qos", "constraint", "mail_user")
    @classmethod
    def _word(cls, v):
        if v and not _WORD.fullmatch(v):
            raise ValueError(f"{v!r} holds characters SLURM does not accept here (spaces, quotes, shell characters)")
        return v

    @field_validator("time", "memory", mode="before")
    @classmethod
    def _number(cls, v, info):
        # YAML reads an unquoted 12:00:00 as the base-60 number 43200, and a bare 64 is 64 MB to SLURM.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if info.field_name == "time":
                raise ValueError(f'YAML read this time as the number {v!r}; put it in quotes, e.g. time: "12:00:00"')
            raise ValueError(f"{v!r} has no unit; write e.g. memory: {v}G (or {v}M)")  # noqa: TRY004 - pydantic reports only ValueError
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v):
        if v and not _TIME.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM time: use MM, HH:MM:SS or D-HH:MM:SS")
        return v

    @field_validator("memory")
    @classmethod
    def _mem(cls, v):
        if v and not _MEM.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM memory size: use e.g. 64G or 8000M")
        return v

    @field_validator("mail_type")
    @classmethod
    def _mail(cls, v):
        if v:
            bad = [t for t in v.split(",") if t not in _MAIL_TYPES]
            if bad:
                raise ValueError(f"unknown mail type {bad[0]!r}; use a comma list of {', '.join(sorted(_MAIL_TYPES))}")
        return v

    @field_validator("modules")
    @classmethod
    def _modules(cls, v):
        for m in v or []:
            if not _MODULE.fullmatch(m):
                raise ValueError(f"module name {m!r} holds characters that are not allowed (letters, digits, _ . / + - only)")
        return v

    @field_validator("setup")
    @classmethod
    def _setup(cls, v):
        for line in v or []:
            if "\x00" in line:
                raise ValueError("setup lines cannot hold NUL characters")
        return v

    @field_validator("extra_sbatch")
    @classmethod
    def _extra(cls, v):
        return [_extra_line(line) for line in v] if v else v


class _PerStage(_Strict):
    # The cluster's array limits: a profile says what its site allows (plan warns beyond it);
    # in a spec it overrides what `hpcffn submit` reads from `scontrol show config`/sacctmgr.
    max_array_size: int | None = Field(None, ge=2, description="SLURM MaxArraySize: larger arrays are split")
    max_submit_jobs: int | None = Field(None, ge=1, description="SLURM MaxSubmitJobs of your association")
    defaults: StageResources = StageResources()
    convert: StageResources = StageResources()
    partitions: StageResources = StageResources()
    coordinates: StageResources = StageResources()
    train: StageResources = StageResources()
    infer: StageResources = StageResources()
    stitch: StageResources = StageResources()
    evaluate: StageResources = StageResources()


class ProfileSpec(_PerStage):
    """A cluster profile file (templates/profiles/<name>.yaml or the user's own)."""

    description: str = ""
    max_time: str | None = Field(None, description="the longest time limit the cluster's partitions allow")

    @field_validator("max_time")
    @classmethod
    def _max_time(cls, v):
        if v and not _TIME.fullmatch(v):
            raise ValueError("must be a SLURM time like 5-00:00:00")
        return v


class ClusterSpec(_PerStage):
    """The cluster profile plus the user's overrides (defaults, then per stage)."""

    profile: str = Field("generic", description="generic, local, ibex or a path to a profile YAML")


class ContainerSpec(_Strict):
    """How each job runs hpcffn: inside an Apptainer/Singularity image or a plain environment."""

    runtime: Literal["apptainer", "singularity", "none"] = "apptainer"
    image: str | None = Field(None, description="the .sif image (required unless runtime is none)")
    binds: list[str] = Field(default_factory=list, description="extra src[:dst[:ro|rw]] bind mounts")
    auto_bind: bool = Field(True, description="bind the workdir and the input directories")
    nv: bool = Field(True, description="pass --nv (host NVIDIA libraries) to GPU stages")
    command: str = Field("hpcffn", description="the hpcffn command inside the container")

    @field_validator("command")
    @classmethod
    def _command(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9_./+\-]+", v):
            raise ValueError(f"{v!r} must be a command name or path (letters, digits, _ . / + - only)")
        return v

    @field_validator("binds")
    @classmethod
    def _binds(cls, v):
        for b in v:
            parts = b.split(":")
            if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")) or not all(parts):
                raise ValueError(f"bind {b!r} must be src, src:dst or src:dst:ro|rw")
            for p in parts:
                _safe_path(p)
        return v


class Spec(_Strict):
    """The whole experiment."""

    name: Name
    workdir: SafePath = Field(description="where the plan, scripts, logs, checkpoints and outputs go")
    volumes: list[VolumeSpec] = Field(min_length=1)
    subvolume: SubvolumeSpec = SubvolumeSpec()
    convert: ConvertSpec = ConvertSpec()
    ffn: FFNParams = FFNParams()
    cluster: ClusterSpec = ClusterSpec()
    container: ContainerSpec = ContainerSpec()
    stages: list[StageName] | None = Field(None, description="default: every stage that applies")
    templates: str | None = Field(None, description="directory of your own *.sbatch.j2 templates (searched first)")


# ---------------------------------------------------------------- loading


def _unique_keys_loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so a second `train:` section would quietly replace the first)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else []:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice in one mapping; keep one", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader


# Values a spec may expand to once YAML aliases (*name) are followed: real specs hold a few
# hundred; nested aliases can make an 18 KB file expand to hundreds of MB of scripts.
MAX_YAML_VALUES = 100_000


def _check_expanded_size(root, path: Path) -> None:
    """Count the values of the document with every alias expanded, without expanding it."""
    import yaml

    sizes: dict[int, int] = {}

    def size(node, open_: frozenset) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise HpcffnError(f"{path}: a YAML alias refers to itself (a recursive structure); write the values out")
        n = 1
        if isinstance(node, yaml.SequenceNode):
            n += sum(size(child, open_ | {id(node)}) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n += sum(size(k, open_ | {id(node)}) + size(v, open_ | {id(node)}) for k, v in node.value)
        if n > MAX_YAML_VALUES:
            raise HpcffnError(f"{path}: expands to more than {MAX_YAML_VALUES} values through YAML aliases (&name/*name); "
                              "write the spec without nesting aliases inside aliases")
        sizes[id(node)] = n
        return n

    if root is not None:
        size(root, frozenset())


def load_yaml(path: Path, what: str = "spec") -> dict:
    """Read a YAML mapping with one-line errors."""
    import yaml

    if path.is_dir():
        raise HpcffnError(f"{what} file {path} is a directory, not a YAML file; give the {what}'s .yaml file in it")
    if not path.is_file():
        hint = f" (or run `hpcffn init {path}`)" if what == "spec" else ""
        raise HpcffnError(f"{what} file {path} does not exist; check the path{hint}")
    try:
        loader = _unique_keys_loader()(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            _check_expanded_size(node, path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise HpcffnError(f"{path}: {where}YAML syntax error ({problem}); fix the YAML") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HpcffnError(f"{path} is not readable ({exc})") from None
    if not isinstance(data, dict):
        keys = "description:, max_time:, defaults:, train: ..." if what == "profile" else "name:, workdir:, volumes: ..."
        raise HpcffnError(f"{path}: expected a YAML mapping of {what} keys ({keys}), got {type(data).__name__}")
    return data


def validate_model(model: type[BaseModel], data: dict, path: Path):
    """model.model_validate with every error on one line: FILE: field a.b: problem; fix (| next ...)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        seen, lines = set(), []
        for err in exc.errors():  # a union field fails once per branch: report each field once
            key = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
            if key not in seen:
                seen.add(key)
                lines.append(format_error(path, err, model).removeprefix(f"{path}: "))
        more = f" ({len(lines)} problems)" if len(lines) > 1 else ""
        raise HpcffnError(f"{path}{more}: " + " | ".join(lines)) from None


def format_error(path: Path, err: dict, root: type[BaseModel]) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    where = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        known = ", ".join(parent.model_fields) if parent else ""
        return f"{path}: field {where}: unknown key; allowed here: {known}"
    if kind == "missing" and loc and isinstance(loc[-1], int):
        parent = ".".join(str(p) for p in loc[:-1])
        return f"{path}: field {parent}: too few values; give 3 (z,y,x, or x,y,z where the reference says so)"
    if kind == "missing":
        return f"{path}: field {where}: required but missing; add it"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    shown = repr(given) if not isinstance(given, (dict, list)) or len(repr(given)) < 60 else type(given).__name__
    return f"{path}: field {where}: {msg} (got {shown}); fix this value"


def _model_at(model, loc):
    """Follow a field path through nested models (lists, tuples, optionals) for key listings."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        current = _unwrap(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp):
    while True:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if args else tp
        elif origin in (list, tuple, dict, Annotated):
            args = typing.get_args(tp)
            tp = args[-1] if origin is dict else args[0]
        else:
            return tp


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file (no filesystem checks of the inputs; see planner)."""
    path = Path(path)
    spec = validate_model(Spec, load_yaml(path), path)
    names = [v.name for v in spec.volumes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise HpcffnError(f"{path}: field volumes: the name {dupes[0]!r} is used twice; give every volume its own name")
    return spec


def load_profile(name_or_path: str, spec_dir: Path, spec_path: Path) -> tuple[ProfileSpec, Path]:
    """A shipped profile by name, or a profile YAML path relative to the spec."""
    from hpcffn.plan.resources import profiles_dir

    shipped = profiles_dir() / f"{name_or_path}.yaml"
    if NAME_RE.fullmatch(name_or_path) and not name_or_path.endswith((".yaml", ".yml")):
        if not shipped.is_file():
            known = ", ".join(sorted(p.stem for p in profiles_dir().glob("*.yaml")))
            raise HpcffnError(
                f"{spec_path}: field cluster.profile: no shipped profile {name_or_path!r} (known: {known}); "
                "or give the path of your own profile .yaml"
            )
        path = shipped
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_absolute():
            path = spec_dir / path
        if not path.exists():
            raise HpcffnError(f"{spec_path}: field cluster.profile: profile file {path} does not exist; fix the path")
        if not path.is_file():
            raise HpcffnError(f"{spec_path}: field cluster.profile: {path} is a directory, not a profile .yaml file; "
                              "fix the path")
    return validate_model(ProfileSpec, load_yaml(path, "profile"), path), path


def stage_resources(profile: ProfileSpec, cluster: ClusterSpec, stage: str) -> StageResources:
    """Merge profile defaults < spec defaults < profile stage < spec stage; "" clears a value.

    The more specific setting wins before the later source: a profile's limit for one stage
    (Ibex: infer 2 days) holds against a spec's generic `defaults.time`; only the spec's own
    per-stage setting overrides it. Fields nothing sets are None.
    """
    return StageResources.model_validate(_merged(profile, cluster, stage))


def resources_as_set(profile: ProfileSpec, cluster: ClusterSpec, stage: str) -> dict:
    """The stage's resources that some layer sets, in the order first set (plan.json's spec.cluster.<stage>)."""
    return {k: v for k, v in _merged(profile, cluster, stage).items() if v not in (None, [])}


def _merged(profile: ProfileSpec, cluster: ClusterSpec, stage: str) -> dict:
    merged: dict = {}
    for layer in (profile.defaults, cluster.defaults, getattr(profile, stage), getattr(cluster, stage)):
        merged.update(layer.model_dump(exclude_none=True))
    return {k: (None if v == "" else v) for k, v in merged.items()}
