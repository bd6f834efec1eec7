"""Stage 4: flood-filling segmentation of one sub-volume.

`segment_location` is the standalone entry (explicit image, checkpoint and output); the plan
entry segments a tile's `infer_box` with the tile's group's latest checkpoint (or the spec's
`ffn.inference.checkpoint`). Progress is saved beside the output as `<output>.state` every
few minutes and on SIGUSR1/SIGTERM (exit layout.EXIT_REQUEUE), and picked up by the next run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import EXIT_REQUEUE, infer_state_path
from hpcffn.core.params import InferenceParams, ModelParams, TrainingParams
from hpcffn.core.plan_model import Plan
from hpcffn.io.volumes import dataset_shape, parse_location, read_box


def state_path(output: Path) -> Path:
    return infer_state_path(output)


def write_segmentation(output: Path, seg: np.ndarray, offset, origins: dict | None = None, **attrs) -> None:
    """`seg` (uint64) with attr `offset` (z,y,x start in the volume) and, when given, the segments'
    `origins` (io/origins.py), written atomically."""

    from hpcffn.io import origins as origin_table
    from hpcffn.io.volumes import atomic_h5

    with atomic_h5(output) as f:
        if origins is not None:
            origin_table.write(f, origins)
        ds = f.create_dataset("seg", data=seg.astype(np.uint64, copy=False), compression="gzip", compression_opts=1)
        # The contract names an `offset` attribute; it is on the file and on the dataset so
        # readers looking at either find it.
        f.attrs["offset"] = ds.attrs["offset"] = np.asarray(offset, np.int64)
        for k, v in attrs.items():
            f.attrs[k] = v


def segment_location(image: str, checkpoint: str | Path, output: str | Path, model_params: ModelParams,
                     params: InferenceParams, box_start=None, box_size=None, xla: bool = False,
                     overwrite: bool = False, log=print, mask: str | None = None,
                     origins: str | Path | None = None) -> int:
    """Segment `image` ("path.h5:dataset") inside an optional z,y,x box; 0 done, 75 saved-for-requeue.

    `origins`: with seed_policy invert_origins, the segmentation of the same box (an earlier
    pass's output) whose fill starts are the seeds, last-created first."""
    from hpcffn.core.pretrained import check_fits
    from hpcffn.ffn.devices import environment_line, use_onednn
    from hpcffn.ffn.inference import fingerprint, make_predict, segment_volume
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.tf1_import import load_weights, resolve_checkpoint
    from hpcffn.ffn.training import StopFlag, signal_name

    use_onednn()  # before TensorFlow is imported
    output = Path(output)
    if output.exists() and not overwrite:
        raise HpcffnError(f"output {output} already exists: remove it, choose another --output, or pass --overwrite")
    loc = parse_location(image, "raw")
    shape = dataset_shape(loc)
    if len(shape) != 3:
        raise HpcffnError(f"{loc}: dataset has {len(shape)} dimensions, expected 3 (z,y,x)")
    start = tuple(box_start) if box_start is not None else (0, 0, 0)
    size = tuple(box_size) if box_size is not None else tuple(s - a for s, a in zip(shape, start))
    if any(a < 0 for a in start) or any(a + n > s for a, n, s in zip(start, size, shape)):
        raise HpcffnError(
            f"box start {start} size {size} (z,y,x) lies outside {loc} of shape {shape}: give a --bbox inside "
            "the image (or re-plan if the volume changed)"
        )
    check_fits(checkpoint, model_params)
    seeds = None
    if params.seed_policy == "invert_origins":
        from hpcffn.io import origins as origin_table

        if origins is None:
            raise HpcffnError("seed_policy invert_origins needs the previous pass's segmentation: give --origins FWD.h5")
        seeds = origin_table.inverted_seeds(origin_table.load(origins, size))
    elif origins is not None:
        raise HpcffnError(f"--origins {origins} is only read with --seed-policy invert_origins")
    fov = fov_zyx(model_params)
    if any(n < f for n, f in zip(size, fov)):
        raise HpcffnError(f"box size z,y,x {size} of {loc} is smaller than the FOV {fov}: use a larger box")
    log(environment_line("infer"))
    prefix = resolve_checkpoint(checkpoint)
    data = read_box(loc, start, size)
    model = build_model(model_params)
    step = load_weights(model, prefix)
    blocked = None
    if mask is not None:
        mask_loc = parse_location(mask, "mask")
        mask_shape = dataset_shape(mask_loc)
        if mask_shape != shape:
            raise HpcffnError(f"mask {mask_loc} has shape {mask_shape}, the image {loc} {shape}: "
                              "give the mask of this volume")
        blocked = read_box(mask_loc, start, size) != 0
    fp = fingerprint(image=str(loc), start=start, size=size, checkpoint=str(Path(prefix).resolve()),
                     model=model_params.model_dump(),
                     # parallel_fills gives the same segmentation: a run may resume with another value
                     inference=params.model_dump(exclude={"parallel_fills", "consensus"}), mask=mask,
                     seeds=None if seeds is None else hashlib.sha256(seeds.tobytes()).hexdigest())
    log(f"hpcffn infer: {loc} box start {start} size {size} with {prefix} (step {step})")
    with StopFlag() as stop:
        result = segment_volume(data, make_predict(model, fov, xla=xla), model_params, params,
                                state_path=state_path(output), fp=fp, stop=stop, log=log, mask=blocked, seeds=seeds)
    if not result.finished:
        log(f"hpcffn infer: {signal_name(stop.signum)} after {result.seeds_tried} seeds: state saved to "
            f"{state_path(output)}; work remains (exit 75)")
        return EXIT_REQUEUE
    write_segmentation(output, result.segmentation, start, result.origins, checkpoint=str(prefix),
                       segments=result.segments, seed_policy=params.seed_policy)
    state_path(output).unlink(missing_ok=True)
    log(f"hpcffn infer: {result.segments} segments from {result.seeds_tried} seeds, "
        f"{result.fov_evaluations} FOV evaluations"
        + (f" ({result.fov_wasted} of them by speculative fills that were redone)" if result.fov_wasted else "")
        + f" -> {output}")
    return 0


def plan_checkpoint(plan: Plan, tile, params: InferenceParams | None = None) -> Path | str:
    """`params.checkpoint` (the --checkpoint flag over the spec's ffn.inference.checkpoint), else
    the tile's group's (or the first group's) train dir."""
    chosen = (params or plan.ffn.inference).checkpoint
    if chosen:
        return chosen
    group = tile.group or (plan.groups[0].name if plan.groups else None)
    if group is None:
        raise HpcffnError(
            f"tile {tile.name} has no group and the plan has no training groups: set ffn.inference.checkpoint in {plan.spec_file}"
        )
    return plan.layout.train_dir(group)


def run_from_plan(plan: Plan, tile_key: str, model_params: ModelParams | None = None,
                  params: InferenceParams | None = None, training: TrainingParams | None = None,
                  log=print, job: str | None = None, pass_name: str = "forward") -> int:
    """Segment one planned tile's infer_box (plan.infer_output says where); marker when done.

    `pass_name` reverse (ffn.inference.consensus): seeds at the forward pass's origins of the
    tile, last-created segment first."""
    from hpcffn.stages.markers import hold_unit, mark_done

    stage = {"forward": "infer", "reverse": "reverse"}[pass_name]
    if stage == "reverse" and not plan.consensus:
        raise HpcffnError(f"--pass reverse: the plan of {plan.spec_file} has no ffn.inference.consensus; "
                          "set it and re-plan")
    tile = plan.tile(plan.task_unit(job or stage, tile_key))
    volume = plan.volume(tile.volume)
    output = plan.infer_output(stage, tile.name)
    params = params or plan.ffn.inference
    origins = None
    if stage == "reverse":
        origins = plan.infer_output("infer", tile.name)
        if not origins.is_file():
            raise HpcffnError(f"the reverse pass of tile {tile.name} needs the forward pass's {origins}: "
                              "run the tile's infer job first (hpcffn submit --resume runs what is missing)")
        params = params.model_copy(update={"seed_policy": "invert_origins"})
    output.parent.mkdir(parents=True, exist_ok=True)
    with hold_unit(plan, stage, tile.name, (output, state_path(output))):
        code = segment_location(volume.raw, plan_checkpoint(plan, tile, params), output, model_params or plan.ffn.model,
                                params, tile.infer_box.start, tile.infer_box.size,
                                xla=(training or plan.ffn.training).xla, overwrite=True, log=log, mask=volume.mask,
                                origins=origins)
        if code == 0:
            mark_done(plan, stage, tile.name)
    return code
