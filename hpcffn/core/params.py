"""The spec sections the stages read: FFN's parameters with FFN's usual defaults (`ffn:`),
the tiling (`subvolume:`) and what convert does to the grayscale (`convert:`).

Shared by the spec (validation), plan.json (resolved values) and the stage code, so a field is
declared once and a job reads it typed. Axis order is stated per field: FFN's own flags give
radii/sizes as x,y,z; volumes are indexed z,y,x.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    field_validator,
    model_serializer,
    model_validator,
)

XYZ = tuple[int, int, int]
ZYX = tuple[int, int, int]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitionParams(_Strict):
    """Stage 1 (FFN compute_partitions)."""

    thresholds: tuple[float, ...] = (
        0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
    )
    lom_radius: XYZ = Field((24, 24, 24), description="x,y,z radius of the local-object-mask box")
    min_size: int = Field(10000, ge=0, description="objects smaller than this (voxels) are removed")
    id_whitelist: tuple[int, ...] | None = Field(
        None, description="only these object ids get partition values; other objects count as background (FFN's --id_whitelist)"
    )

    @field_validator("id_whitelist")
    @classmethod
    def _ids(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (not v or any(i < 1 for i in v)):
            raise ValueError("must be a non-empty list of object ids >= 1 (0 is background)")
        return v

    @field_validator("thresholds")
    @classmethod
    def _sorted(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or list(v) != sorted(v) or not all(0.0 < t <= 1.0 for t in v):
            raise ValueError("must be a non-empty increasing list of fractions in (0, 1]")
        if len(v) > 253:
            raise ValueError("at most 253 thresholds fit the uint8 partition map")
        return v

    @field_validator("lom_radius")
    @classmethod
    def _nonneg(cls, v: XYZ) -> XYZ:
        if any(r < 0 for r in v):
            raise ValueError("radii must be >= 0")
        return v


class CoordinateParams(_Strict):
    """Stage 2 (FFN build_coordinates)."""

    margin: XYZ = Field(
        (24, 24, 24),
        description="z,y,x voxels excluded at every border (at least FOV/2 + deltas)",
    )
    max_records: int | None = Field(None, ge=1, description="cap per group file, split evenly over classes")
    seed: int = Field(0, description="random seed for resampling and shuffling")
    shuffle_mb: int = Field(
        8, ge=1, description="MB of records (8 bytes each) shuffled in memory at a time; the rest wait in "
        "temporary shard files. Bounds the stage's peak memory (about 110 MB plus this)",
    )


class ModelParams(_Strict):
    """The convstack_3d network."""

    name: Literal["convstack_3d"] = "convstack_3d"
    depth: int = Field(12, ge=1)
    features: int = Field(32, ge=1)
    fov_size: XYZ = Field((33, 33, 33), description="x,y,z field of view (odd sizes)")
    deltas: XYZ = Field((8, 8, 8), description="x,y,z FOV move step")
    image_mean: float = 128.0
    image_stddev: float = Field(33.0, gt=0)

    @field_validator("fov_size")
    @classmethod
    def _odd(cls, v: XYZ) -> XYZ:
        if any(s < 1 or s % 2 == 0 for s in v):
            raise ValueError("every FOV size must be odd and >= 1")
        return v

    @model_validator(mode="after")
    def _deltas_fit(self) -> ModelParams:
        for axis, d, f in zip("xyz", self.deltas, self.fov_size):
            if d < 0 or (f > 1 and d > f // 2):
                raise ValueError(f"delta {axis}={d} must be between 0 and fov_size//2={f // 2}")
        return self


class TrainingParams(_Strict):
    """Stage 3."""

    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(0.001, gt=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0)
    clip_gradient_norm: float | None = Field(1.0, gt=0)
    max_steps: int = Field(1_000_000, ge=1, description="total budget across requeues")
    checkpoint_minutes: float = Field(30.0, gt=0)
    move_threshold: float = Field(0.9, gt=0, lt=1)
    mixed_precision: bool = False
    xla: bool = False
    init_checkpoint: str | None = Field(
        None, description="ours or a TF1 FFN convstack_3d checkpoint to start from, or a pretrained name (fib25)"
    )
    seed: int = 0
    deterministic: bool = Field(
        False, description="same seed, same data -> the same weights (TF op determinism; slower input pipeline)"
    )


class ConsensusParams(_Strict):
    """FFN's oversegmentation consensus: a reverse pass and the split consensus of the two (docs/consensus.md)."""

    passes: tuple[Literal["forward", "reverse"], ...] = Field(
        ("forward", "reverse"), description="the passes whose split consensus is the tile's segmentation: "
        "forward (the seed policy's order) then reverse (its segments' origins, last first)"
    )
    split_min_size: int = Field(1000, ge=0, description="consensus pieces smaller than this (voxels) become 0 (FFN: 1000)")
    small_pieces: Literal["drop", "forward"] = Field(
        "drop", description="drop: pieces below split_min_size become 0 (FFN's); forward: they keep their forward "
        "segment's id (only disagreements of split_min_size voxels or more split a segment)"
    )

    @field_validator("passes")
    @classmethod
    def _two(cls, v):
        if tuple(v) != ("forward", "reverse"):
            raise ValueError("must be [forward, reverse] (FFN's consensus of a pass and its inverted-origins pass)")
        return v


# Newer inference options left out of plan.json while they hold their default (see the serializer).
_UNSET_DEFAULTS = {"tiles_per_task": 1, "precision": "float32", "fov_per_second": None}


class InferenceParams(_Strict):
    """Stage 4 (flood-filling inference); the defaults are Google FFN's (see docs/train_infer.md)."""

    checkpoint: str | None = Field(
        None, description="checkpoint to segment with (a path, or a pretrained name: fib25); default: the tile's group's latest"
    )
    init_activation: float = Field(0.95, gt=0, lt=1, description="probability the seed voxel starts with")
    pad_value: float = Field(0.05, gt=0, lt=1, description="probability read where nothing was predicted yet")
    move_threshold: float = Field(0.9, gt=0, lt=1)
    segment_threshold: float = Field(0.6, gt=0, lt=1)
    min_segment_size: int = Field(1000, ge=1)
    min_boundary_dist: XYZ = Field((1, 1, 1), description="x,y,z: a seed this close to a segment is skipped")
    disco_seed_threshold: float = Field(
        0.0, description="FFN's: when more than this fraction of a FOV reaches move_threshold, voxels once "
        "below 0.5 are never raised again; negative turns it off"
    )
    seed_policy: Literal["peaks", "peaks_shuffled", "invert_origins"] = Field(
        "peaks", description="peaks: FFN's PolicyPeaks (raster order); peaks_shuffled: maxima at least 0.5 voxel "
        "from an edge where the whole FOV fits, in a fixed shuffled order (hpcffn 0.1's seeds); "
        "invert_origins: FFN's PolicyInvertOrigins, the fill starts of a previous segmentation of the same box, "
        "last-created segment first (needs its file: --origins, or the plan's forward pass)"
    )
    movement_policy: Literal["face_max", "face_centre"] = Field(
        "face_max", description="face_max: FFN's FaceMaxMovementPolicy and segment rules; face_centre: moves to the "
        "centre of each face above move_threshold, batch_size FOVs per call, the seed's connected part becomes the "
        "segment (hpcffn 0.1's fill)"
    )
    seed_threshold: float = Field(
        0.0, ge=0, le=1,
        description="peak seeds: edges weaker than this fraction of the 99th-percentile edge strength are not "
        "boundaries (FFN: 0; hpcffn 0.1: 0.5)",
    )
    seed_min_distance: int = Field(3, ge=1, description="minimum distance between peak seeds (voxels; FFN: 3, hpcffn 0.1: 5)")
    checkpoint_minutes: float = Field(10.0, gt=0)
    batch_size: int = Field(
        1, ge=1, description="movement_policy face_centre only: non-overlapping FOVs evaluated per model call"
    )
    parallel_fills: int = Field(
        1, ge=1, le=64,
        description="face_max: fills of this many seeds run side by side, one FOV each per model call (for GPUs); "
        "speculative and checked, so the segmentation is exactly the one-fill-at-a-time result",
    )
    tiles_per_task: int = Field(
        1, ge=1, le=64,
        description="tiles one infer array task segments side by side, their FOVs evaluated together in one "
        "model call (for GPUs); every tile's segmentation is the one it gets alone. The array has "
        "ceil(tiles/K) tasks",
    )
    precision: Literal["float32", "mixed_float16"] = Field(
        "float32", description="mixed_float16: the network computes in float16 (GPUs; FFN's manual: 2x+ faster "
        "at a slightly higher merge rate); float32 reproduces FFN's segmentation",
    )
    fov_per_second: float | None = Field(
        None, gt=0, description="inference FOVs per second one task reaches at this tiles_per_task (measure it "
        "with benchmarks/bench_gpu.py); the plan's GPU-hour estimate uses it. Default: "
        "4.5, Google FFN's own FIB-25 run on a 2-core CPU (docs/train_infer.md)",
    )
    consensus: ConsensusParams | None = Field(
        None, description="off by default; {passes: [forward, reverse], split_min_size: 1000}: a reverse pass per tile "
        "and FFN's split consensus of the two become the tile's segmentation"
    )

    @model_serializer(mode="wrap")
    def _without_unset_consensus(self, handler):
        # Plans without consensus (or tiles_per_task, precision, fov_per_second) keep their plan.json
        # and resolved spec byte for byte.
        out = handler(self)
        if out.get("consensus", 0) is None:
            del out["consensus"]
        for key, default in _UNSET_DEFAULTS.items():
            if key in out and out[key] == default:
                del out[key]
        return out


class StitchParams(_Strict):
    """Joining the tiles' segmentations into one per volume (see hpcffn/stages/stitch.py)."""

    fill_gaps: bool = Field(
        True, description="a voxel its own tile left unsegmented (as FFN does near a tile's faces, where it sees "
        "less image) takes the segment of the first neighbour, in plan tile order, whose infer box covers it and "
        "segmented it (that segment's joined id); on FIB-25 this lowered VI by 1-7%",
    )
    min_overlap_voxels: int = Field(
        100, ge=1, description="voxels two tiles' segments must share in the overlap to be joined"
    )
    min_overlap_fraction: float = Field(
        0.5, gt=0, le=1,
        description="...and that share must be at least this fraction of the larger (or smaller, see fraction_of) "
        "segment there",
    )
    fraction_of: Literal["larger", "smaller", "owner"] = Field(
        "larger", description="larger: a merge inside one tile never spreads into its neighbour, but a body one tile "
        "split is joined only through its largest piece; smaller: every piece lying mostly inside the neighbour's "
        "segment is joined (fewer splits at tile faces, a tile's merge spreads); owner: in the voxels each tile owns, "
        "a neighbour's segment joins the owner's segment it mostly lies in (fewer splits; a tile's merge spreads "
        "through the joins of every tile it touches) - docs/real_data.md measures all three",
    )
    resegment: bool = Field(
        True, description="default on: decide the uncertain joins by FFN itself: one flood fill with the inference "
        "checkpoint where the two segments meet joins them when it covers most of both (hpcffn/stages/resegment.py; "
        "pairs that agree on nearly all their shared voxels join at once, and a fill FFN does not accept leaves the "
        "decision to fraction_of). Costs FOVs in the joins tasks, which load the checkpoint; docs/real_data.md "
        "measures it. false: join by fraction_of alone, no checkpoint (nor TensorFlow) in the joins tasks",
    )
    resegment_radius: int = Field(24, ge=4, description="half size (voxels) of the box each resegment fill runs in")
    resegment_coverage: float = Field(
        0.5, gt=0, le=1, description="share of each segment's voxels in the fill box the fill must cover to join them"
    )

    @model_serializer(mode="wrap")
    def _without_defaults(self, handler):
        # Plans that keep these defaults keep their plan.json (and its fingerprints) byte for byte.
        out = handler(self)
        for name in _STITCH_WRITTEN_UNLESS_DEFAULT:
            if name in out and out[name] == type(self).model_fields[name].default:
                del out[name]
        return out


# StitchParams fields added after plans were first written: left out of plan.json at their default.
_STITCH_WRITTEN_UNLESS_DEFAULT = ("fill_gaps", "fraction_of", "resegment", "resegment_radius", "resegment_coverage")


class FFNParams(_Strict):
    """Everything under `ffn:` in the spec."""

    partitions: PartitionParams = PartitionParams()
    coordinates: CoordinateParams = CoordinateParams()
    model: ModelParams = ModelParams()
    training: TrainingParams = TrainingParams()
    inference: InferenceParams = InferenceParams()
    stitch: StitchParams = StitchParams()

    @model_validator(mode="after")
    def _pretrained_fits(self) -> FFNParams:
        from hpcffn.core.pretrained import model_mismatch, pretrained

        for field, name in (("training.init_checkpoint", self.training.init_checkpoint),
                            ("inference.checkpoint", self.inference.checkpoint)):
            p = pretrained(name)
            if p is not None and (problem := model_mismatch(p, self.model)):
                raise ValueError(f"{field}: {problem}; change ffn.model or the checkpoint")
        return self


class SubvolumeSpec(_Strict):
    """How volumes are cut into sub-volumes (tiles) and dealt into GPU groups."""

    size: ZYX = Field((500, 500, 500), description="z,y,x tile size")
    overlap: ZYX = Field((32, 32, 32), description="z,y,x voxels added on each side of a tile for inference")
    min_edge: ZYX | None = Field(
        None, description="z,y,x: an edge remainder shorter than this merges into the previous tile; "
        "default: the smallest size that holds the FOV plus both margins"
    )
    # strict: YAML's `true` is not 1 group.
    groups: int = Field(1, ge=1, strict=True, description="number of GPU training groups")
    array_throttle: int | None = Field(None, ge=1, strict=True, description="at most this many array tasks run at once (%N)")

    @field_validator("size")
    @classmethod
    def _size(cls, v):
        if any(s < 1 for s in v):
            raise ValueError("every size must be >= 1")
        return v

    @field_validator("overlap", "min_edge")
    @classmethod
    def _nonneg(cls, v):
        if v is not None and any(s < 0 for s in v):
            raise ValueError("every value must be >= 0")
        return v


class ClaheSpec(_Strict):
    """Contrast-limited adaptive histogram equalisation of the grayscale during convert."""

    enabled: bool = Field(False, description="equalise local contrast (CLAHE) of every converted grayscale stack")
    kernel_size: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (16, 128, 128), description="z,y,x size of the contextual regions, in voxels")
    clip_limit: float = Field(0.01, gt=0, le=1, description="contrast limit (scikit-image's clip_limit, 0..1)")


class ConvertSpec(_Strict):
    """What convert does to the grayscale beyond the uint8 mapping."""

    clahe: ClaheSpec = ClaheSpec()
