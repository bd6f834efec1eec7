"""CLI commands: `hpcffn convert` and `hpcffn stage convert|partitions|coordinates`.

Thin: parse options, build parameters (the plan's values, overridden by any flag given, or
the spec defaults when standalone), call the stage module, print a short summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpcffn.commands.options import field_options, refuse_existing, task_plan
from hpcffn.commands.options import float_list as _floats
from hpcffn.commands.options import int_list as _ints
from hpcffn.commands.options import with_overrides as _params
from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ClaheSpec
from hpcffn.core.plan_model import load_plan as _load_plan


def _id_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        ids = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        ids = ()
    if not ids or any(i < 1 for i in ids):
        raise HpcffnError(f"--id-whitelist {text!r}: write object ids (integers >= 1) separated by commas, e.g. 3,17,42")
    return ids


def _exclusions(items: list[str] | None) -> list[tuple[float, float, float, float]]:
    out = []
    for text in items or []:
        try:
            vals = tuple(float(v) for v in text.split(","))
        except ValueError:
            vals = ()
        if len(vals) != 4 or vals[3] < 0:
            raise HpcffnError(f"--exclusion-region {text!r}: write x,y,z,r (sphere centre and radius, voxels)")
        out.append(vals)
    return out


def _echo_partitions(counts: dict, where: str) -> None:
    total = sum(counts.values())
    parts = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    typer.echo(f"partitions -> {where}: {total} voxels ({parts})")


def _echo_coordinates(summary: dict, where: str) -> None:
    typer.echo(
        f"coordinates -> {where}: {summary['records']} records from {summary['volumes']} volume(s), "
        f"{summary['records_per_class']} per class"
    )
    for c, row in summary["classes"].items():
        typer.echo(f"  class {c:>3}: {row['voxels']:>12} voxels -> {row['records']} records")


def _clahe_option(text: str | None, clip_limit: float) -> ClaheSpec | None:
    """--clahe z,y,x and --clahe-clip-limit as convert's clahe settings."""
    if text is None:
        return None
    try:
        kernel = [int(v) for v in text.split(",")]
    except ValueError:
        kernel = []
    if len(kernel) != 3 or min(kernel) < 1:
        raise HpcffnError(f"--clahe {text!r}: give the z,y,x size of the contextual regions, e.g. --clahe 16,128,128")
    if not 0 < clip_limit <= 1:
        raise HpcffnError(f"--clahe-clip-limit {clip_limit}: give a number in (0, 1], e.g. 0.01")
    return ClaheSpec(enabled=True, kernel_size=kernel, clip_limit=clip_limit)


def register(app: typer.Typer, stage_app: typer.Typer) -> None:
    """Attach this area's commands to the root app and the `stage` sub-app."""
    app.command("convert")(convert_cmd)
    app.command("export")(export_cmd)
    stage_app.command("convert")(convert_cmd)
    stage_app.command("partitions")(partitions)
    stage_app.command("coordinates")(coordinates)


def convert_cmd(
    raw: Annotated[str | None, typer.Option(help="Grayscale: path.h5[:dataset], a .tif stack or a directory of .tif slices.")] = None,
    groundtruth: Annotated[str | None, typer.Option(help="Groundtruth, same forms as --raw.")] = None,
    output: Annotated[Path | None, typer.Option(help="HDF5 file to write (datasets raw and stack).")] = None,
    polarity: Annotated[str | None, typer.Option(help="white: white background, black objects; black: zero background; labels: ids as they are (default).")] = None,
    rescale: Annotated[str | None, typer.Option(help="Non-uint8 grayscale: dtype (full dtype range -> 0..255) or minmax (stack min..max -> 0..255).")] = None,
    connectivity: Annotated[int | None, typer.Option(help="Connected components for white/black: 6, 18 or 26.")] = None,
    slab: Annotated[int | None, typer.Option(help="Slices per streamed slab (default: from a 512 MB budget).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output.")] = False,
    clahe: Annotated[str | None, typer.Option(help="Equalise local contrast (CLAHE) with contextual regions of z,y,x voxels, e.g. 16,128,128 (standalone; in a plan: convert.clahe).")] = None,
    clahe_clip_limit: Annotated[float, typer.Option(help="CLAHE contrast limit (0..1).")] = 0.01,
    plan: Annotated[Path | None, typer.Option(help="plan.json (or workdir): convert a planned volume.")] = None,
    volume: Annotated[str | None, typer.Option(help="With --plan: volume name or index.")] = None,
) -> None:
    """TIF (or HDF5) grayscale/groundtruth -> FFN's HDF5 (raw uint8, stack uint64)."""
    from hpcffn.stages import convert as stage

    if plan is not None:
        if volume is None:
            raise HpcffnError("--plan needs --volume NAME|INDEX (the array task id in the rendered script)")
        if raw or groundtruth or output or polarity or clahe:
            raise HpcffnError("--plan reads the sources, their polarity and convert.clahe from the plan: drop "
                              "--raw/--groundtruth/--output/--polarity/--clahe (set volumes[].polarity and "
                              "convert.clahe in the spec)")
        info = stage.run_from_plan(_load_plan(plan), volume, rescale=rescale, connectivity=connectivity, slab=slab)
        typer.echo(f"convert: volume {volume} -> {info}")
        return
    if output is None:
        raise HpcffnError("give --output out.h5 (or --plan plan.json --volume V)")
    info = stage.convert(output, stage.ConvertOptions(
        raw=raw, groundtruth=groundtruth, polarity=polarity or "labels", rescale=rescale or "none",
        connectivity=connectivity or 6, slab=slab, overwrite=overwrite,
        clahe=_clahe_option(clahe, clahe_clip_limit),
    ))
    typer.echo(f"convert -> {output}: {info}")


def export_cmd(
    source: Annotated[str, typer.Argument(help="HDF5 volume path.h5[:dataset] (default dataset seg), e.g. WORKDIR/stitch/<volume>.h5.")],
    output: Annotated[Path, typer.Argument(help="A .tif/.tiff file (multi-page) or a directory (one TIF per z slice).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """HDF5 volume -> TIF (for Fiji): a segmentation, raw, stack or af, as slices or one stack."""
    from hpcffn.io.export import export_tif

    info = export_tif(source, output, overwrite=overwrite)
    typer.echo(f"export -> {info['output']}: {info['slices']} slices {info['shape'][1]}x{info['shape'][2]}, "
               f"{info['dtype']}, {info['form']}")


def partitions(
    plan: Annotated[Path | None, typer.Option(help="plan.json (or workdir).")] = None,
    tile: Annotated[str | None, typer.Option(help="With --plan: tile name or index.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="With --plan and an index: the array job whose task it is.")] = None,
    input: Annotated[str | None, typer.Option("--input", help="Standalone: groundtruth path.h5:dataset (default dataset stack).")] = None,
    output: Annotated[str | None, typer.Option(help="Standalone: partition map path.h5:dataset (default dataset af).")] = None,
    thresholds: Annotated[str | None, typer.Option(help="Comma-separated increasing fractions (FFN --thresholds).")] = None,
    lom_radius: Annotated[str | None, typer.Option(help="x,y,z radius of the local object mask (FFN --lom_radius).")] = None,
    min_size: Annotated[int | None, typer.Option(help="Objects below this many voxels become background.")] = None,
    exclusion_region: Annotated[list[str] | None, typer.Option(help="Standalone: x,y,z,r sphere marked 255 (repeatable).")] = None,
    id_whitelist: Annotated[str | None, typer.Option(help="Comma-separated object ids: only these get partition values (FFN --id_whitelist).")] = None,
    mask: Annotated[str | None, typer.Option(help="Standalone: path.h5[:dataset] (default mask), same shape; voxels whose LOM box holds a non-zero mask voxel become 255.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Standalone: replace an existing --output.")] = False,
) -> None:
    """Stage 1: FFN partition map (compute_partitions) of a tile or an HDF5 volume."""
    options = dict(locals())  # the flags, named after PartitionParams' fields
    from hpcffn.core.params import PartitionParams
    from hpcffn.stages import partitions as stage

    overrides = field_options(PartitionParams, options, {
        "thresholds": lambda text: _floats(text, "--thresholds"),
        "lom_radius": lambda text: _ints(text, "--lom-radius"), "id_whitelist": _id_list})
    if plan is not None:
        if tile is None:
            raise HpcffnError("--plan needs --tile NAME|INDEX (the array task id in the rendered script)")
        if input or output or exclusion_region or mask:
            raise HpcffnError("--plan reads the tile's box (and the volume's mask) from the plan: "
                              "drop --input/--output/--exclusion-region/--mask")
        p, tile = task_plan(plan, job, tile)
        params = _params(PartitionParams, p.ffn.partitions, overrides, "ffn.partitions")
        counts = stage.run_from_plan(p, tile, params)
        _echo_partitions(counts, str(p.layout.partitions(p.tile(tile).name)))
        return
    if not input or not output:
        raise HpcffnError("give --input gt.h5:stack and --output af.h5:af (or --plan plan.json --tile T)")
    params = _params(PartitionParams, None, overrides, "partitions")
    from hpcffn.io.volumes import parse_location

    refuse_existing(parse_location(output, "af").path, overwrite)
    counts = stage.partitions_standalone(
        input, output, params.thresholds, params.lom_radius, params.min_size, _exclusions(exclusion_region),
        id_whitelist=params.id_whitelist, mask_loc=mask
    )
    _echo_partitions(counts, output)


def coordinates(
    plan: Annotated[Path | None, typer.Option(help="plan.json (or workdir).")] = None,
    group: Annotated[str | None, typer.Option(help="With --plan: group name or index.")] = None,
    input: Annotated[list[str] | None, typer.Option("--input", help="Standalone: name:af.h5:dataset (repeatable; FFN --partition_volumes).")] = None,
    output: Annotated[Path | None, typer.Option(help="Standalone: coordinates .tfrecord.gz (GZIP TFRecord).")] = None,
    margin: Annotated[str | None, typer.Option(help="z,y,x voxels excluded at every border (FFN --margin).")] = None,
    max_records: Annotated[int | None, typer.Option(help="Cap on records, split evenly over classes.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (resampling and shuffling).")] = None,
    tmpdir: Annotated[Path | None, typer.Option(help="Folder for temporary shards (default: beside the output).")] = None,
    shuffle_mb: Annotated[int | None, typer.Option(help="MB of records shuffled in memory at a time (bounds peak memory; default 8).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Standalone: replace an existing --output.")] = False,
) -> None:
    """Stage 2: class-balanced training coordinates (build_coordinates) -> GZIP TFRecord."""
    options = dict(locals())  # the flags, named after CoordinateParams' fields
    from hpcffn.core.params import CoordinateParams
    from hpcffn.stages import coordinates as stage

    overrides = field_options(CoordinateParams, options, {"margin": lambda text: _ints(text, "--margin")})
    if plan is not None:
        if group is None:
            raise HpcffnError("--plan needs --group NAME|INDEX")
        if input or output:
            raise HpcffnError("--plan reads the group's partition files from the plan: drop --input/--output")
        p = _load_plan(plan)
        params = _params(CoordinateParams, p.ffn.coordinates, overrides, "ffn.coordinates")
        summary = stage.run_from_plan(p, group, params, tmpdir=tmpdir)
        _echo_coordinates(summary, str(p.layout.coordinates(p.group(group).name)))
        return
    if not input or output is None:
        raise HpcffnError("give --input name:af.h5:af (repeatable) and --output coords.tfrecord.gz (or --plan P --group G)")
    params = _params(CoordinateParams, None, overrides, "coordinates")
    vols = [stage.parse_input(t) for t in input]
    refuse_existing(output, overwrite)
    import sys

    summary = stage.build_coordinates(
        vols, output, params.margin, params.max_records, params.seed, tmpdir=tmpdir, progress=sys.stderr.isatty(),
        shard_records=stage.shard_records(params.shuffle_mb),
    )
    _echo_coordinates(summary, str(output))
