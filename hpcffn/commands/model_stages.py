"""CLI commands: `hpcffn stage train|infer|consensus|stitch|evaluate`, from a plan or standalone with explicit paths.

Thin: parse options, build parameter objects (plan values overridden by any flag given), call
the stage module, exit with its code (0 done, 75 requeue me, 2 user error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcffn.commands.options import field_options, int_list, refuse_existing, task_plan
from hpcffn.commands.options import with_overrides as _params
from hpcffn.core.errors import HpcffnError
from hpcffn.core.plan_model import load_plan as _load_plan
from hpcffn.core.stage_table import PASS_STAGE


def _triple(text: str | None, flag: str) -> tuple[int, int, int] | None:
    return int_list(text, flag, 3, "33")  # type: ignore[return-value]


_MODEL = "Model (override the plan's ffn.model)"
_TRAIN = "Training (override the plan's ffn.training)"
_INFER = "Inference (override the plan's ffn.inference)"


def _bbox(text: str | None):
    """`z0,y0,x0:dz,dy,dx` -> (start, size)."""
    if text is None:
        return None, None
    start, sep, size = text.partition(":")
    if not sep:
        raise HpcffnError(f"--bbox {text!r}: write it as z0,y0,x0:dz,dy,dx (start and size, z,y,x)")
    s, n = _triple(start, "--bbox start"), _triple(size, "--bbox size")
    if any(v < 0 for v in s) or any(v < 1 for v in n):
        raise HpcffnError(f"--bbox {text!r}: start must be >= 0 and sizes >= 1")
    return s, n


# The model options, shared by train and infer (they override the plan's ffn.model).
_Depth = Annotated[int | None, typer.Option(rich_help_panel=_MODEL)]
_Features = Annotated[int | None, typer.Option(rich_help_panel=_MODEL)]
_FovSize = Annotated[str | None, typer.Option(help="x,y,z (odd).", rich_help_panel=_MODEL)]
_Deltas = Annotated[str | None, typer.Option(help="x,y,z FOV move step.", rich_help_panel=_MODEL)]
_ImageMean = Annotated[float | None, typer.Option(rich_help_panel=_MODEL)]
_ImageStddev = Annotated[float | None, typer.Option(rich_help_panel=_MODEL)]


# Model flags given as text ("x,y,z"), read into the field's value.
_MODEL_TEXT = {"fov_size": lambda text: _triple(text, "--fov-size"), "deltas": lambda text: _triple(text, "--deltas")}


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach this area's commands to the root app and the `stage` sub-app."""
    stage_app.command("train")(train)
    stage_app.command("infer")(infer)
    stage_app.command("consensus")(consensus)
    stage_app.command("stitch")(stitch)
    stage_app.command("evaluate")(evaluate)


def train(
    plan: Annotated[Path | None, typer.Option("--plan", help="plan.json (or its workdir).")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Group name (g0) or index, with --plan.")] = None,
    coordinates: Annotated[list[Path] | None, typer.Option("--coordinates", help="Standalone: coordinate TFRecord(s) (GZIP); repeatable.")] = None,
    volume: Annotated[list[str] | None, typer.Option("--volume", help="Standalone: NAME:raw.h5:raw:labels.h5:stack, NAME as in the records; repeatable.")] = None,
    train_dir: Annotated[Path | None, typer.Option("--train-dir", help="Standalone: where checkpoints and TensorBoard events go.")] = None,
    depth: _Depth = None,
    features: _Features = None,
    fov_size: _FovSize = None,
    deltas: _Deltas = None,
    image_mean: _ImageMean = None,
    image_stddev: _ImageStddev = None,
    batch_size: Annotated[int | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    learning_rate: Annotated[float | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam.", rich_help_panel=_TRAIN)] = None,
    momentum: Annotated[float | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    clip_gradient_norm: Annotated[float | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    max_steps: Annotated[int | None, typer.Option(help="Total optimizer steps across requeues.", rich_help_panel=_TRAIN)] = None,
    checkpoint_minutes: Annotated[float | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    move_threshold: Annotated[float | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    mixed_precision: Annotated[bool | None, typer.Option("--mixed-precision/--no-mixed-precision", rich_help_panel=_TRAIN)] = None,
    xla: Annotated[bool | None, typer.Option("--xla/--no-xla", rich_help_panel=_TRAIN)] = None,
    init_checkpoint: Annotated[str | None, typer.Option(help="Ours or a TF1 FFN checkpoint to start from, or a pretrained model's name (fib25).", rich_help_panel=_TRAIN)] = None,
    seed: Annotated[int | None, typer.Option(rich_help_panel=_TRAIN)] = None,
    deterministic: Annotated[bool | None, typer.Option("--deterministic/--no-deterministic", help="Reproducible runs (TF op determinism).", rich_help_panel=_TRAIN)] = None,
) -> None:
    """Stage 3: train an FFN model (exit 0 at max_steps; 75 after a checkpoint on SIGUSR1/SIGTERM)."""
    options = dict(locals())  # the flags, named after the parameter models' fields
    from hpcffn.core.params import ModelParams, TrainingParams

    mo = field_options(ModelParams, options, _MODEL_TEXT)
    to = field_options(TrainingParams, options)
    if plan is not None:
        if group is None or coordinates or volume or train_dir:
            raise HpcffnError("with --plan give --group G only (coordinates, volumes and train dir come from the plan)")
        from hpcffn.stages.train import run_from_plan

        p = _load_plan(plan)
        mp = _params(ModelParams, p.ffn.model, mo, "ffn.model")
        tp = _params(TrainingParams, p.ffn.training, to, "ffn.training")
        _exit(run_from_plan(p, group, mp, tp))
        return
    if not coordinates or not volume or train_dir is None:
        raise HpcffnError("give --plan P --group G, or standalone --coordinates F --volume NAME:raw.h5:raw:labels.h5:stack --train-dir D")
    from hpcffn.ffn.examples import parse_volume_arg
    from hpcffn.stages.train import train_model

    mp = _params(ModelParams, None, mo, "ffn.model")
    tp = _params(TrainingParams, None, to, "ffn.training")
    _exit(train_model(coordinates, [parse_volume_arg(v) for v in volume], mp, tp, train_dir))


def infer(
    plan: Annotated[Path | None, typer.Option("--plan", help="plan.json (or its workdir).")] = None,
    tile: Annotated[str | None, typer.Option("--tile", help="Tile name or array index, with --plan.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="With --plan and an index: the array job (e.g. infer_g0) whose task it is.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Standalone: path.h5:raw to segment.")] = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="Checkpoint prefix or train dir (ours or TF1 FFN), or a pretrained model's name (fib25).")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Standalone: segmentation HDF5 to write (dataset seg).")] = None,
    bbox: Annotated[str | None, typer.Option("--bbox", help="Standalone: z0,y0,x0:dz,dy,dx box to segment (default: all).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Standalone: replace an existing --output.")] = False,
    mask: Annotated[str | None, typer.Option("--mask", help="Standalone: path.h5[:dataset] (default mask) of the image's shape; non-zero voxels are never seeded or segmented.")] = None,
    origins: Annotated[Path | None, typer.Option("--origins", help="Standalone, with --seed-policy invert_origins: an earlier pass's output of the same box; its segments' fill starts are the seeds, last-created first.")] = None,
    pass_name: Annotated[str, typer.Option("--pass", help="With --plan: forward, or reverse (ffn.inference.consensus: seeds at the forward pass's origins).")] = "forward",
    depth: _Depth = None,
    features: _Features = None,
    fov_size: _FovSize = None,
    deltas: _Deltas = None,
    image_mean: _ImageMean = None,
    image_stddev: _ImageStddev = None,
    move_threshold: Annotated[float | None, typer.Option(rich_help_panel=_INFER)] = None,
    segment_threshold: Annotated[float | None, typer.Option(rich_help_panel=_INFER)] = None,
    min_segment_size: Annotated[int | None, typer.Option(rich_help_panel=_INFER)] = None,
    min_boundary_dist: Annotated[str | None, typer.Option(help="x,y,z.", rich_help_panel=_INFER)] = None,
    seed_policy: Annotated[str | None, typer.Option(help="peaks (FFN's PolicyPeaks, raster order), peaks_shuffled (maxima in a fixed shuffled order) or invert_origins (FFN's PolicyInvertOrigins; needs --origins).", rich_help_panel=_INFER)] = None,
    movement_policy: Annotated[str | None, typer.Option(help="face_max (FFN's: to each face's maximum) or face_centre (to each face's centre, FOVs batched).", rich_help_panel=_INFER)] = None,
    disco_seed_threshold: Annotated[float | None, typer.Option(help="FFN's disconnection rule; negative: off.", rich_help_panel=_INFER)] = None,
    seed_threshold: Annotated[float | None, typer.Option(rich_help_panel=_INFER)] = None,
    seed_min_distance: Annotated[int | None, typer.Option(rich_help_panel=_INFER)] = None,
    checkpoint_minutes: Annotated[float | None, typer.Option(help="Minutes between saved progress.", rich_help_panel=_INFER)] = None,
    batch_size: Annotated[int | None, typer.Option(help="FOVs per model call (movement policy face_centre only).", rich_help_panel=_INFER)] = None,
    parallel_fills: Annotated[int | None, typer.Option(help="Seeds filled side by side, one FOV each per model call (same result; for GPUs).", rich_help_panel=_INFER)] = None,
    precision: Annotated[str | None, typer.Option(help="float32 (FFN's segmentation) or mixed_float16 (float16 network; GPUs).", rich_help_panel=_INFER)] = None,
    xla: Annotated[bool, typer.Option("--xla", help="Compile the model with XLA.", rich_help_panel=_INFER)] = False,
) -> None:
    """Stage 4: flood-filling segmentation (exit 0 done; 75 after saving progress on SIGUSR1/SIGTERM)."""
    options = dict(locals())  # the flags, named after the parameter models' fields
    from hpcffn.core.params import InferenceParams, ModelParams

    mo = field_options(ModelParams, options, _MODEL_TEXT)
    io = field_options(InferenceParams, options,
                       {"min_boundary_dist": lambda text: _triple(text, "--min-boundary-dist")})
    if plan is not None:
        if tile is None or image or output or bbox or mask or origins:
            raise HpcffnError("with --plan give --tile T only (image, box, mask, origins and output come from the plan)")
        if pass_name not in PASS_STAGE:
            raise HpcffnError(f"--pass {pass_name!r}: give forward or reverse")
        from hpcffn.stages.infer import run_from_plan

        p, tile = task_plan(plan, job, tile)
        mp = _params(ModelParams, p.ffn.model, mo, "ffn.model")
        ip = _params(InferenceParams, p.ffn.inference, io, "ffn.inference")
        tp = p.ffn.training.model_copy(update={"xla": True}) if xla else None
        _exit(run_from_plan(p, tile, mp, ip, tp, job=job, pass_name=pass_name))
        return
    if image is None or checkpoint is None or output is None:
        raise HpcffnError("give --plan P --tile T, or standalone --image path.h5:raw --checkpoint CKPT --output seg.h5")
    if pass_name != "forward":
        raise HpcffnError("--pass is for --plan; standalone, give --seed-policy invert_origins --origins FWD.h5")
    from hpcffn.stages.infer import segment_location

    mp = _params(ModelParams, None, mo, "ffn.model")
    ip = _params(InferenceParams, None, io, "ffn.inference")
    start, size = _bbox(bbox)
    _exit(segment_location(image, checkpoint, output, mp, ip, start, size, xla=xla, overwrite=overwrite, mask=mask,
                           origins=origins))


def consensus(
    plan: Annotated[Path | None, typer.Option("--plan", help="plan.json (or its workdir).")] = None,
    tile: Annotated[str | None, typer.Option("--tile", help="Tile name or array index, with --plan.")] = None,
    a: Annotated[Path | None, typer.Option("--a", help="Standalone: the forward pass's segmentation (infer output).")] = None,
    b: Annotated[Path | None, typer.Option("--b", help="Standalone: the reverse pass's segmentation of the same box.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Standalone: the consensus segmentation HDF5 to write (dataset seg).")] = None,
    split_min_size: Annotated[int | None, typer.Option(help="Pieces smaller than this (voxels) become 0 (FFN: 1000; default: the plan's).")] = None,
    small_pieces: Annotated[str | None, typer.Option("--small-pieces", help="drop (default): pieces below --split-min-size become 0 (FFN's); forward: they keep their forward id.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Standalone: replace an existing --output.")] = False,
) -> None:
    """FFN's split consensus of two inference passes: a merge either pass did not make is split."""
    if plan is not None:
        if tile is None or a or b or output or split_min_size is not None or small_pieces is not None:
            raise HpcffnError("with --plan give --tile T only (the passes, output and split_min_size come from the plan)")
        from hpcffn.stages.consensus import run_from_plan

        run_from_plan(_load_plan(plan), tile)
        return
    if a is None or b is None or output is None:
        raise HpcffnError("give --plan P --tile T, or standalone --a FWD.h5 --b REV.h5 --output C.h5")
    from hpcffn.stages.consensus import consensus_files

    small_pieces = small_pieces or "drop"
    if small_pieces not in ("drop", "forward"):
        raise HpcffnError(f"--small-pieces {small_pieces!r}: give drop or forward")
    consensus_files(a, b, output, 1000 if split_min_size is None else split_min_size, overwrite=overwrite,
                    small_pieces=small_pieces)


def stitch(
    plan: Annotated[Path | None, typer.Option("--plan", help="plan.json (or its workdir).")] = None,
    volume: Annotated[str | None, typer.Option("--volume", help="With --plan: volume name or index.")] = None,
    segmentation: Annotated[list[str] | None, typer.Option("--segmentation", help="Standalone: an infer output seg.h5[:seg] with its offset; repeatable, one per tile.")] = None,
    output: Annotated[str | None, typer.Option("--output", help="Standalone: stitched volume out.h5[:seg].")] = None,
    shape: Annotated[str | None, typer.Option("--shape", help="Standalone: z,y,x volume shape (default: what the tiles reach).")] = None,
    min_overlap_voxels: Annotated[int | None, typer.Option(help="Voxels two tiles' segments must share to be joined.")] = None,
    min_overlap_fraction: Annotated[float | None, typer.Option(help="...as a fraction of the larger (--fraction-of) of the two there.")] = None,
    fraction_of: Annotated[str | None, typer.Option("--fraction-of", help="larger (default: a tile's merge never spreads), smaller (a tile's split pieces all join) or owner (where a tile owns the voxels it decides).")] = None,
    resegment: Annotated[bool | None, typer.Option("--resegment/--no-resegment", help="With --plan: decide uncertain joins by one FFN fill where the two segments meet (ffn.stitch.resegment, default on; standalone: off).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Standalone: replace an existing --output.")] = False,
    fill_gaps: Annotated[bool | None, typer.Option("--fill-gaps/--no-fill-gaps", help="Voxels a tile left unsegmented take the segment of a neighbour that covers and segmented them (default: on).")] = None,
) -> None:
    """Join the tiles' segmentations of a volume into one, merging segments that agree in the overlaps."""
    options = dict(locals())  # the flags, named after StitchParams' fields
    from hpcffn.core.params import StitchParams
    from hpcffn.stages import stitch as stage

    overrides = field_options(StitchParams, options)
    if plan is not None:
        if volume is None:
            raise HpcffnError("--plan needs --volume NAME|INDEX (the array task id in the rendered script)")
        if segmentation or output or shape:
            raise HpcffnError("--plan reads the tiles from the plan: drop --segmentation/--output/--shape")
        p = _load_plan(plan)
        params = _params(StitchParams, p.ffn.stitch, overrides, "ffn.stitch")
        stage.run_from_plan(p, str(p.task_unit("stitch", volume)), params)
        return
    if not segmentation or not output:
        raise HpcffnError("give --plan P --volume V, or standalone --segmentation a.h5:seg [--segmentation ...] --output out.h5:seg")
    from hpcffn.io.volumes import parse_location

    refuse_existing(parse_location(output, "seg").path, overwrite)
    size = int_list(shape, "--shape", 3, "500") if shape else None
    # No plan, so no image or checkpoint to fill with: standalone joins by --fraction-of alone
    # unless --resegment asks (stitch_files refuses it).
    params = _params(StitchParams, StitchParams(resegment=False), overrides, "stitch")
    stage.stitch_files(segmentation, output, params, shape=size)


def evaluate(
    plan: Annotated[Path | None, typer.Option("--plan", help="plan.json (or its workdir).")] = None,
    seg: Annotated[str | None, typer.Option("--seg", help="Standalone: segmentation path.h5:seg.")] = None,
    groundtruth: Annotated[str | None, typer.Option("--groundtruth", help="Standalone: groundtruth path.h5:stack.")] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Standalone: also write the JSON report here.")] = None,
) -> None:
    """Evaluate segmentations against groundtruth: VI split/merge and adapted Rand error (table + JSON)."""
    if plan is not None:
        if seg or groundtruth or output:
            raise HpcffnError("with --plan give nothing else (the report goes to the workdir's evaluate/report.json)")
        from hpcffn.stages.evaluate import run_from_plan

        run_from_plan(_load_plan(plan))
        return
    if seg is None or groundtruth is None:
        raise HpcffnError("give --plan P, or standalone --seg seg.h5:seg --groundtruth gt.h5:stack [--output report.json]")
    from hpcffn.stages.evaluate import evaluate_files

    evaluate_files(seg, groundtruth, output)
