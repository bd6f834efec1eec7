"""Convert grayscale and groundtruth (TIF stacks, slice directories or HDF5) to FFN's HDF5.

Writes `raw` (uint8) and/or `stack` (uint64 ids, 0 = background) into one HDF5 file,
streaming z slabs so stacks larger than memory convert, into a temp file renamed at the end.
Grayscale that is not uint8 needs an explicit rescale (no silent guessing of intensity
ranges):
  dtype   map the dtype's full range to 0..255 (uint16: v * 255 // 65535; floats: 0..1)
  minmax  map the stack's own min..max to 0..255 (one extra streaming pass for min/max)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.params import ClaheSpec
from hpcffn.core.progress import ProgressBar
from hpcffn.io.ownership import OWNER_ATTR, same_file, written_by_hpcffn

RESCALES = ("none", "dtype", "minmax")
_CHUNK = (64, 64, 64)


def _chunks(shape) -> tuple[int, int, int]:
    return tuple(max(1, min(c, n)) for c, n in zip(_CHUNK, shape))  # type: ignore[return-value]


def _to_uint8(block: np.ndarray, rescale: str, lo: float, hi: float) -> np.ndarray:
    if block.dtype == np.uint8:
        return block
    if rescale == "dtype":
        if block.dtype == bool:
            return block.astype(np.uint8) * np.uint8(255)
        if np.issubdtype(block.dtype, np.integer):
            info = np.iinfo(block.dtype)
            lo, hi = float(info.min), float(info.max)
        else:
            lo, hi = 0.0, 1.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (block.astype(np.float64) - lo) * scale
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def check_float_range(name: str, block: np.ndarray, z0: int) -> None:
    """`rescale: dtype` maps floats 0..1 to 0..255; float raw outside 0..1 (a camera's 0..4095 saved as
    float32) would become 255 nearly everywhere, so it is refused before anything is written."""
    if block.dtype.kind != "f" or not block.size:
        return
    lo, hi = float(np.nanmin(block)), float(np.nanmax(block))
    if lo < 0 or hi > 1:
        raise HpcffnError(
            f"raw {name} is {block.dtype} with values {lo:g}..{hi:g} (slices {z0}..{z0 + len(block) - 1}) but "
            "rescale dtype maps float 0..1 to 0..255, so everything above 1 would become 255: use rescale minmax "
            "(the stack's own min..max; --rescale minmax or `rescale: minmax` on the volume)"
        )


def _min_max(reader, slab: int) -> tuple[float, float]:
    lo, hi = np.inf, -np.inf
    for z0 in range(0, reader.shape[0], slab):
        block = reader.read(z0, min(reader.shape[0], z0 + slab))
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


@dataclass(frozen=True)
class ConvertOptions:
    """What one conversion reads and how it maps it: the standalone command's flags, or a planned
    volume's settings (run_from_plan). Checked when made, before any input is opened."""

    raw: str | None = None  # grayscale: path.h5[:dataset], a TIF stack or a directory of TIF slices
    groundtruth: str | None = None  # the same forms
    polarity: str = "labels"  # how groundtruth becomes object ids (io/labeling.py)
    rescale: str = "none"  # how non-uint8 grayscale becomes uint8 (module docstring)
    raw_dataset: str = "raw"  # the datasets written into the output file
    gt_dataset: str = "stack"
    connectivity: int = 6  # of the components white/black groundtruth becomes
    clahe: ClaheSpec | None = None  # equalise the grayscale after the uint8 mapping, when enabled
    slab: int | None = None  # slices per streamed slab (default: from a memory budget)
    overwrite: bool = False  # replace an existing output
    progress: bool | None = None  # a progress bar (None: when stderr is a terminal)
    expected_shape: tuple[int, int, int] | None = None  # the plan's shape: other data is refused

    def __post_init__(self):
        if self.raw is None and self.groundtruth is None:
            raise HpcffnError("nothing to convert: give --raw and/or --groundtruth")
        if self.rescale not in RESCALES:
            raise HpcffnError(f"rescale {self.rescale!r} is not one of {', '.join(RESCALES)}")
        if self.slab is not None and self.slab < 1:  # range(0, n, slab) would write nothing (or fail on 0)
            raise HpcffnError(f"--slab {self.slab}: give a positive number of slices per slab (or leave it out)")


def convert(output: str | Path, opts: ConvertOptions) -> dict:
    """Write `raw` and/or `stack` into `output` (replaced whole, atomically); returns the shape,
    the min..max that rescale minmax mapped and the object count.

    Three steps: open and check the inputs (headers and sampled groundtruth slices, before
    anything is written), stream the grayscale, stream the groundtruth.
    """
    from contextlib import ExitStack

    from hpcffn.io.labeling import default_slab
    from hpcffn.io.volumes import atomic_h5

    output = Path(output)
    refuse_input_as_output(output, {"--raw": opts.raw, "--groundtruth": opts.groundtruth})
    if output.exists() and not opts.overwrite:
        raise HpcffnError(f"{output} already exists; remove it or choose another --output (pass --overwrite to replace it)")
    with ExitStack() as readers:
        raw_r, gt_r = _open_inputs(opts, readers)
        shape = (raw_r or gt_r).shape
        step = opts.slab or default_slab(shape)
        minmax = raw_r is not None and opts.rescale == "minmax" and raw_r.dtype != np.uint8
        total = shape[0] * ((raw_r is not None) + (gt_r is not None) + minmax)
        info: dict = {"shape": list(shape)}
        with atomic_h5(output) as fh, ProgressBar(f"convert {output.name}", total, opts.progress) as bar:
            fh.attrs[OWNER_ATTR] = "convert"  # this file is hpcffn's to replace (io/ownership.py)
            if raw_r:
                info.update(_write_raw(fh, raw_r, opts, step, bar))
            if gt_r:
                info["objects"] = _write_groundtruth(fh, gt_r, opts, step, bar)
        return info


def _open_inputs(opts: ConvertOptions, readers):
    """(raw reader, groundtruth reader), either None when not given, each closed by `readers`
    (an ExitStack); refuses mismatched shapes, unmapped grayscale and groundtruth whose sampled
    slices show the wrong polarity."""
    from hpcffn.io.labeling import check_options, polarity_findings, sampled_planes
    from hpcffn.io.tif import open_volume

    raw_r = gt_r = None
    if opts.raw is not None:
        raw_r = open_volume(opts.raw, "raw")
        readers.callback(raw_r.close)
    if opts.groundtruth is not None:
        gt_r = open_volume(opts.groundtruth, "stack")
        readers.callback(gt_r.close)
        check_options(gt_r, opts.polarity, opts.connectivity)
    if raw_r and gt_r and raw_r.shape != gt_r.shape:
        raise HpcffnError(
            f"raw {raw_r.name} has shape {raw_r.shape} (z,y,x) but groundtruth {gt_r.name} has "
            f"{gt_r.shape}; both must cover the same voxels"
        )
    shape = (raw_r or gt_r).shape
    if opts.expected_shape is not None and tuple(shape) != tuple(opts.expected_shape):
        raise HpcffnError(
            f"{(raw_r or gt_r).name} is {tuple(shape)} (z,y,x) but the plan says {tuple(opts.expected_shape)}; "
            "re-run `hpcffn plan` after changing the data"
        )
    if raw_r and raw_r.dtype != np.uint8 and opts.rescale == "none":
        raise HpcffnError(
            f"raw {raw_r.name} is {raw_r.dtype}, not uint8: choose how to map it to 0..255 with "
            "--rescale dtype (full dtype range) or --rescale minmax (the stack's min..max), "
            "or `rescale:` on the volume in the spec"
        )
    if gt_r:
        # What validate samples, checked here too (after the header checks): a standalone
        # convert must not write the background or the boundaries as objects.
        errors, warnings = polarity_findings(sampled_planes(gt_r), opts.polarity, gt_r.name)
        if errors:
            raise HpcffnError(f"groundtruth: {errors[0]}")
        for w in warnings:
            print(f"hpcffn: warning: {w}", file=sys.stderr)
    return raw_r, gt_r


def _write_raw(fh, raw_r, opts: ConvertOptions, step: int, bar: ProgressBar) -> dict:
    """The uint8 grayscale dataset, slab by slab (CLAHE on kernel-aligned slabs when enabled);
    returns {"raw_range": [min, max]} when rescale minmax measured it."""
    shape, out = raw_r.shape, {}
    lo = hi = 0.0
    if opts.rescale == "minmax" and raw_r.dtype != np.uint8:
        lo, hi = _min_max(raw_r, step)
        bar.advance(shape[0])
        out["raw_range"] = [lo, hi]
    ds = fh.create_dataset(
        opts.raw_dataset, shape=shape, dtype=np.uint8, chunks=_chunks(shape), compression="gzip",
        compression_opts=1,
    )

    def read_uint8(a, b):
        block = raw_r.read(a, b)
        if opts.rescale == "dtype":
            check_float_range(raw_r.name, block, a)
        return _to_uint8(block, opts.rescale, lo, hi)

    clahe = opts.clahe if opts.clahe is not None and opts.clahe.enabled else None
    if clahe:
        from hpcffn.stages.clahe import clahe_slabs

        blocks = clahe_slabs(read_uint8, shape[0], step, clahe.kernel_size, clahe.clip_limit)
    else:
        blocks = ((z0, read_uint8(z0, min(shape[0], z0 + step))) for z0 in range(0, shape[0], step))
    for z0, block in blocks:
        ds[z0:z0 + len(block)] = block
        bar.advance(len(block))
    ds.attrs["source"] = raw_r.name
    ds.attrs["rescale"] = opts.rescale if raw_r.dtype != np.uint8 else "none"
    if clahe:
        ds.attrs["clahe_kernel_size"] = list(clahe.kernel_size)
        ds.attrs["clahe_clip_limit"] = clahe.clip_limit
    return out


def _write_groundtruth(fh, gt_r, opts: ConvertOptions, step: int, bar: ProgressBar) -> int:
    """The uint64 object-id dataset, labelled slab by slab; returns the object count."""
    from hpcffn.io.labeling import label_volume

    shape = gt_r.shape
    ds = fh.create_dataset(
        opts.gt_dataset, shape=shape, dtype=np.uint64, chunks=_chunks(shape), compression="gzip",
        compression_opts=1, shuffle=True,
    )

    def write(z0, ids):
        ds[z0:z0 + len(ids)] = ids

    def read_back(z0, z1):
        return ds[z0:z1]

    objects = label_volume(gt_r, write, read_back, opts.polarity, opts.connectivity, step, bar.advance)
    _check_objects(gt_r.name, objects, opts.polarity)
    ds.attrs["source"] = gt_r.name
    ds.attrs["polarity"] = opts.polarity
    if opts.polarity != "labels":
        ds.attrs["connectivity"] = opts.connectivity
    return objects


def run_from_plan(plan, volume_key, rescale: str | None = None, connectivity: int | None = None,
                  progress: bool | None = None, slab: int | None = None) -> dict:
    """Convert one planned volume into workdir/data/<volume>.h5 (only the datasets planned there)."""
    from hpcffn.io.volumes import parse_location
    from hpcffn.stages.markers import hold_unit, mark_done

    vol = plan.volume(plan.task_unit("convert", volume_key))
    target = plan.layout.converted_volume(vol.name)
    raw_loc = parse_location(vol.raw, "raw")
    gt_loc = parse_location(vol.groundtruth, "stack") if vol.groundtruth else None

    def planned_here(loc) -> bool:
        return loc is not None and Path(loc.path).resolve() == target.resolve()

    want_raw, want_gt = planned_here(raw_loc), planned_here(gt_loc)
    if not (want_raw or want_gt):
        raise HpcffnError(
            f"volume {vol.name} needs no conversion: its raw and groundtruth are read from "
            f"{vol.raw} and {vol.groundtruth}"
        )
    refuse_replacing_user_data(plan, vol.name, target)
    tile_files = [plan.layout.tile_file(t.name) for t in plan.tiles if t.volume == vol.name] if vol.tile_files else []
    outputs = (target, *tile_files)
    with hold_unit(plan, "convert", vol.name, outputs):
        info = convert(target, ConvertOptions(
            raw=vol.raw_source if want_raw else None,
            groundtruth=vol.groundtruth_source if want_gt else None,
            polarity=vol.polarity,
            rescale=rescale or vol.rescale,
            raw_dataset=raw_loc.dataset,
            gt_dataset=gt_loc.dataset if gt_loc else "stack",
            connectivity=connectivity or vol.connectivity,
            clahe=planned_clahe(plan) if want_raw else None,
            slab=slab,
            overwrite=True,  # our own output of an earlier run
            progress=progress,
            expected_shape=vol.shape,
        ))
        if vol.tile_files:
            info["tile_files"] = write_tile_files(plan, vol)
        mark_done(plan, "convert", vol.name, **info)
    return info


def refuse_input_as_output(output: Path, sources: dict[str, str | None]) -> None:
    """The output file is replaced whole: an input in it would be lost with every other dataset there."""
    from hpcffn.io.volumes import parse_location

    for flag, text in sources.items():
        if text is not None and same_file(parse_location(text, "raw").path, output):
            raise HpcffnError(f"--output {output} is also the input {flag} {text}: convert replaces the output file "
                              "whole (every dataset in it would be lost); write to another --output")


def refuse_replacing_user_data(plan, volume: str, target: Path) -> None:
    """What `hpcffn plan` checked, again before writing: convert never replaces an input of any
    volume, nor a file at its output path that hpcffn did not write (the plan may be older than the file)."""
    from hpcffn.io.volumes import parse_location

    for v in plan.volumes:
        for what, text in (("raw", v.raw_source), ("groundtruth", v.groundtruth_source), ("mask", v.mask)):
            if text and same_file(parse_location(text, "raw").path, target):
                raise HpcffnError(f"{target} is volume {v.name}'s {what} input, and converting volume {volume} would "
                                  "replace it (and every dataset in it); move that input out of the workdir's data/ "
                                  "folder, then `hpcffn plan` again")
    if target.is_file() and not written_by_hpcffn(target, plan.layout.marker("convert", volume)):
        raise HpcffnError(f"{target} exists and was not written by hpcffn: converting volume {volume} would replace "
                          "it whole; move that file out of the workdir's data/ folder and run again")


def planned_clahe(plan) -> ClaheSpec | None:
    """The spec's convert.clahe settings when it is enabled (None otherwise)."""
    clahe = plan.spec.convert.clahe
    return clahe if clahe.enabled else None


def _check_objects(name: str, objects: int, polarity: str) -> None:
    """What `hpcffn validate` samples, on the full data: no objects at all is refused (nothing is
    written), one object with a white/black mask is most likely the background taken for it."""
    if objects == 0:
        raise HpcffnError(f"groundtruth {name} holds no object with polarity {polarity} (all background): training "
                          "would learn background only; check the dataset and the volume's polarity")
    if objects == 1 and polarity in ("white", "black"):
        import sys

        other = "black" if polarity == "white" else "white"
        print(f"hpcffn: warning: groundtruth {name} is one single object with polarity {polarity}: if the "
              f"background is {other}, set polarity: {other} and convert again", file=sys.stderr)


def write_tile_files(plan, vol) -> int:
    """One HDF5 per tile of `vol` (datasets raw and stack of the tile's box, file attribute
    volume_offset = z,y,x of the box in the volume).

    For users who feed sub-volume files to FFN's own scripts, as the lab did by hand.
    """

    from hpcffn.io.volumes import atomic_h5, read_box

    tiles = [t for t in plan.tiles if t.volume == vol.name]
    for tile in tiles:
        start, size = tile.box.start, tile.box.size
        with atomic_h5(plan.layout.tile_file(tile.name)) as fh:
            sources = [("raw", vol.raw, "raw")] + ([("stack", vol.groundtruth, "stack")] if vol.groundtruth else [])
            for name, location, default in sources:
                data = read_box(location, start, size, default)
                fh.create_dataset(name, data=data, chunks=_chunks(data.shape), compression="gzip",
                                  compression_opts=1, shuffle=data.dtype.itemsize > 1)
            # Not `offset`: the standalone stages read that attribute and would shift this
            # tile's coordinates into the volume's, while training on the file reads it locally.
            fh.attrs["volume_offset"] = start
            fh.attrs["volume"] = vol.name
    return len(tiles)
