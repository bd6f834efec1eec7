"""Stage 4: flood-filling segmentation of one sub-volume.

`segment_location` is the standalone entry (explicit image, checkpoint and output); the plan
entry segments a tile's `infer_box` with the tile's group's latest checkpoint (or the spec's
`ffn.inference.checkpoint`). Progress is saved beside the output as `<output>.state` every
few minutes and on SIGUSR1/SIGTERM (exit layout.EXIT_REQUEUE), and picked up by the next run.
With ffn.inference.tiles_per_task K a plan task segments K tiles side by side in one process,
their FOVs in one model call (`segment_tiles`, ffn/multi_tile.py), each tile as it would alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.layout import EXIT_REQUEUE, infer_state_path
from hpcffn.core.params import InferenceParams, ModelParams, TrainingParams
from hpcffn.core.plan_model import Plan
from hpcffn.core.stage_table import PASS_STAGE
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


@dataclass
class TileRun:
    """One box to segment, checked and read: what `segment_volume` needs, and where it writes."""

    output: Path
    loc: object
    start: tuple
    size: tuple
    data: np.ndarray
    blocked: np.ndarray | None
    seeds: np.ndarray | None
    fp: str
    name: str = ""


def prepare_tile(image: str, checkpoint: str | Path, output: str | Path, model_params: ModelParams, params: InferenceParams,
                 box_start=None, box_size=None, overwrite: bool = False, mask: str | None = None,
                 origins: str | Path | None = None, name: str = "") -> TileRun:
    """Check and read one box to segment (image, box, checkpoint, mask, seeds) and its resume fingerprint."""
    from hpcffn.core.pretrained import check_fits
    from hpcffn.ffn.devices import use_onednn
    from hpcffn.ffn.inference import fingerprint
    from hpcffn.ffn.model import fov_zyx
    from hpcffn.ffn.tf1_import import resolve_checkpoint

    use_onednn()  # before TensorFlow is imported (resolve_checkpoint imports it)
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
    prefix = resolve_checkpoint(checkpoint)
    data = read_box(loc, start, size)
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
                     # these give the same segmentation: a run may resume with other values
                     inference=params.model_dump(exclude=SAME_RESULT), mask=mask,
                     seeds=None if seeds is None else hashlib.sha256(seeds.tobytes()).hexdigest())
    return TileRun(output, loc, start, size, data, blocked, seeds, fp, name)


# Inference options that do not change the segmentation (left out of the resume fingerprint).
SAME_RESULT = {"parallel_fills", "tiles_per_task", "fov_per_second", "consensus"}


def load_predict(checkpoint: str | Path, model_params: ModelParams, params: InferenceParams, xla: bool, log):
    """(model call, checkpoint prefix, step) of `checkpoint` in `params.precision`."""
    from hpcffn.ffn.devices import environment_line, use_onednn
    from hpcffn.ffn.inference import make_predict
    from hpcffn.ffn.model import build_model, fov_zyx
    from hpcffn.ffn.tf1_import import load_weights, resolve_checkpoint

    use_onednn()  # before TensorFlow is imported
    log(environment_line("infer"))
    prefix = resolve_checkpoint(checkpoint)
    model = build_model(model_params, mixed_precision=params.precision == "mixed_float16")
    step = load_weights(model, prefix)
    return make_predict(model, fov_zyx(model_params), xla=xla), prefix, step


def _work(run: TileRun, model_params: ModelParams, params: InferenceParams, stop, log):
    """One tile's whole fill loop as a function of the model call (multi_tile.run_side_by_side)."""
    from hpcffn.ffn.inference import segment_volume

    return lambda predict: segment_volume(run.data, predict, model_params, params, state_path=state_path(run.output),
                                          fp=run.fp, stop=stop, log=log, mask=run.blocked, seeds=run.seeds)


def _finish(run: TileRun, result, prefix: str, params: InferenceParams, stop, log) -> int:
    """Write a finished tile's segmentation (and drop its progress file); 75 when work remains."""
    from hpcffn.ffn.training import signal_name

    if not result.finished:
        log(f"hpcffn infer: {signal_name(stop.signum)} after {result.seeds_tried} seeds: state saved to "
            f"{state_path(run.output)}; work remains (exit 75)")
        return EXIT_REQUEUE
    write_segmentation(run.output, result.segmentation, run.start, result.origins, checkpoint=str(prefix),
                       segments=result.segments, seed_policy=params.seed_policy)
    state_path(run.output).unlink(missing_ok=True)
    log(f"hpcffn infer: {result.segments} segments from {result.seeds_tried} seeds, "
        f"{result.fov_evaluations} FOV evaluations"
        + (f" ({result.fov_wasted} of them by speculative fills that were redone)" if result.fov_wasted else "")
        + f" -> {run.output}")
    return 0


def segment_location(image: str, checkpoint: str | Path, output: str | Path, model_params: ModelParams,
                     params: InferenceParams, box_start=None, box_size=None, xla: bool = False,
                     overwrite: bool = False, log=print, mask: str | None = None,
                     origins: str | Path | None = None) -> int:
    """Segment `image` ("path.h5:dataset") inside an optional z,y,x box; 0 done, 75 saved-for-requeue.

    `origins`: with seed_policy invert_origins, the segmentation of the same box (an earlier
    pass's output) whose fill starts are the seeds, last-created first."""
    from hpcffn.ffn.training import StopFlag

    run = prepare_tile(image, checkpoint, output, model_params, params, box_start, box_size,
                       overwrite, mask, origins)
    predict, prefix, step = load_predict(checkpoint, model_params, params, xla, log)
    log(f"hpcffn infer: {run.loc} box start {run.start} size {run.size} with {prefix} (step {step})")
    with StopFlag() as stop:
        result = _work(run, model_params, params, stop, log)(predict)
    return _finish(run, result, prefix, params, stop, log)


def segment_tiles(runs: list[TileRun], checkpoint: str | Path, model_params: ModelParams, params: InferenceParams,
                  xla: bool = False, log=print, on_done=None) -> list[int]:
    """Segment several prepared boxes side by side, their FOVs in one model call per round
    (ffn/multi_tile.py); each tile's result is the one it gets alone. Exit code per tile;
    `on_done(run)` after each tile written (its marker)."""
    from hpcffn.ffn.multi_tile import run_side_by_side
    from hpcffn.ffn.training import StopFlag

    predict, prefix, step = load_predict(checkpoint, model_params, params, xla, log)
    for run in runs:
        log(f"hpcffn infer: {run.name or run.loc} box start {run.start} size {run.size} with {prefix} (step {step})")

    def tile_log(run: TileRun):
        return lambda line: log(f"[{run.name}] {line}" if run.name else line)

    with StopFlag() as stop:
        works = [_work(r, model_params, params, stop, tile_log(r)) for r in runs]
        results, stats = run_side_by_side(works, predict, keep_errors=True)
    log(f"hpcffn infer: {len(runs)} tiles side by side: {stats.fovs} FOVs in {stats.calls} model calls "
        f"({stats.fovs_per_call:.2f} per call; {stats.full_fovs_per_call:.2f} while all {len(runs)} tiles worked)")
    # the tiles that finished are written before a failed tile's error ends the task
    codes = []
    for r, res in zip(runs, results):
        codes.append(None if isinstance(res, BaseException) else _finish(r, res, prefix, params, stop, tile_log(r)))
        if codes[-1] == 0 and on_done is not None:
            on_done(r)
    failed = next((res for res in results if isinstance(res, BaseException)), None)
    if failed is not None:
        raise failed
    return codes


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
    """Segment one planned task's tiles (one, or tiles_per_task side by side), each tile's infer_box
    (plan.infer_output says where), with a marker per finished tile (and one for the task's bundle).

    `pass_name` reverse (ffn.inference.consensus): seeds at the forward pass's origins of the
    tile, last-created segment first."""
    from contextlib import ExitStack

    from hpcffn.core.bundles import first_and_count, is_bundle, members
    from hpcffn.stages.markers import hold_unit, mark_done

    stage = PASS_STAGE[pass_name]
    if stage == "reverse" and not plan.consensus:
        raise HpcffnError(f"--pass reverse: the plan of {plan.spec_file} has no ffn.inference.consensus; "
                          "set it and re-plan")
    unit = str(plan.task_unit(job or stage, tile_key))
    tiles = members(plan.tiles, unit) if is_bundle(unit) else [plan.tile(unit)]
    if len(tiles) != first_and_count(unit)[1]:
        raise HpcffnError(f"task {unit} does not match the tiles of the plan of {plan.spec_file}; re-run `hpcffn plan`")
    params = params or plan.ffn.inference
    if stage == "reverse":
        params = params.model_copy(update={"seed_policy": "invert_origins"})
    mp = model_params or plan.ffn.model
    xla = (training or plan.ffn.training).xla
    checkpoint = plan_checkpoint(plan, tiles[0], params)

    def origins_of(tile) -> Path | None:
        if stage != "reverse":
            return None
        forward = plan.infer_output("infer", tile.name)
        if not forward.is_file():
            raise HpcffnError(f"the reverse pass of tile {tile.name} needs the forward pass's {forward}: "
                              "run the tile's infer job first (hpcffn submit --resume runs what is missing)")
        return forward

    with ExitStack() as held:
        if len(tiles) == 1:
            tile = tiles[0]
            volume = plan.volume(tile.volume)
            output = plan.infer_output(stage, tile.name)
            origins = origins_of(tile)
            output.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(hold_unit(plan, stage, tile.name, (output, state_path(output))))
            codes = [segment_location(volume.raw, checkpoint, output, mp, params, tile.infer_box.start,
                                      tile.infer_box.size, xla=xla, overwrite=True, log=log, mask=volume.mask,
                                      origins=origins)]
        else:
            runs = []
            for tile in tiles:
                output = plan.infer_output(stage, tile.name)
                output.parent.mkdir(parents=True, exist_ok=True)
                held.enter_context(hold_unit(plan, stage, tile.name, (output, state_path(output))))
                if plan.layout.marker(stage, tile.name).is_file() and output.is_file():
                    continue  # done in an earlier run of this task
                volume = plan.volume(tile.volume)
                runs.append(prepare_tile(volume.raw, checkpoint, output, mp, params, tile.infer_box.start,
                                         tile.infer_box.size, overwrite=True, mask=volume.mask,
                                         origins=origins_of(tile), name=tile.name))
            codes = segment_tiles(runs, checkpoint, mp, params, xla=xla, log=log,
                                  on_done=lambda run: mark_done(plan, stage, run.name)) if runs else []
        if all(c == 0 for c in codes):
            if len(tiles) == 1:
                mark_done(plan, stage, tiles[0].name)
            else:
                mark_done(plan, stage, unit, tiles=[t.name for t in tiles])
    return next((c for c in codes if c != 0), 0)
