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
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
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


def convert(
    output: str | Path,
    raw: str | None = None,
    groundtruth: str | None = None,
    polarity: str = "labels",
    rescale: str = "none",
    raw_dataset: str = "raw",
    gt_dataset: str = "stack",
    connectivity: int = 6,
    slab: int | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    expected_shape=None,
    clahe: dict | None = None,
) -> dict:
    """Write `raw` and/or `stack` into `output`; returns shape and object count.

    `clahe` ({"kernel_size": [z, y, x], "clip_limit": c}) equalises the grayscale's local
    contrast after the uint8 mapping (hpcffn/stages/clahe.py).
    """

    from hpcffn.io.labeling import (
        check_options,
        default_slab,
        label_volume,
        polarity_findings,
        sampled_planes,
    )
    from hpcffn.io.tif import open_volume
    from hpcffn.io.volumes import atomic_h5

    if raw is None and groundtruth is None:
        raise HpcffnError("nothing to convert: give --raw and/or --groundtruth")
    if rescale not in RESCALES:
        raise HpcffnError(f"rescale {rescale!r} is not one of {', '.join(RESCALES)}")
    if slab is not None and slab < 1:  # range(0, n, slab) would write nothing (or fail on 0)
        raise HpcffnError(f"--slab {slab}: give a positive number of slices per slab (or leave it out)")
    output = Path(output)
    refuse_input_as_output(output, {"--raw": raw, "--groundtruth": groundtruth})
    if output.exists() and not overwrite:
        raise HpcffnError(f"{output} already exists; remove it or choose another --output (pass --overwrite to replace it)")
    readers = []
    try:
        raw_r = open_volume(raw, "raw") if raw is not None else None
        if raw_r:
            readers.append(raw_r)
        gt_r = open_volume(groundtruth, "stack") if groundtruth is not None else None
        if gt_r:
            readers.append(gt_r)
            check_options(gt_r, polarity, connectivity)
        if raw_r and gt_r and raw_r.shape != gt_r.shape:
            raise HpcffnError(
                f"raw {raw_r.name} has shape {raw_r.shape} (z,y,x) but groundtruth {gt_r.name} has "
                f"{gt_r.shape}; both must cover the same voxels"
            )
        shape = (raw_r or gt_r).shape
        if expected_shape is not None and tuple(shape) != tuple(expected_shape):
            raise HpcffnError(
                f"{(raw_r or gt_r).name} is {tuple(shape)} (z,y,x) but the plan says {tuple(expected_shape)}; "
                "re-run `hpcffn plan` after changing the data"
            )
        if raw_r and raw_r.dtype != np.uint8 and rescale == "none":
            raise HpcffnError(
                f"raw {raw_r.name} is {raw_r.dtype}, not uint8: choose how to map it to 0..255 with "
                "--rescale dtype (full dtype range) or --rescale minmax (the stack's min..max), "
                "or `rescale:` on the volume in the spec"
            )
        if gt_r:
            # What validate samples, checked here too (after the header checks): a standalone
            # convert must not write the background or the boundaries as objects.
            errors, warnings = polarity_findings(sampled_planes(gt_r), polarity, gt_r.name)
            if errors:
                raise HpcffnError(f"groundtruth: {errors[0]}")
            for w in warnings:
                print(f"hpcffn: warning: {w}", file=sys.stderr)
        step = slab or default_slab(shape)
        total = (shape[0] if raw_r else 0) + (shape[0] if gt_r else 0) + (
            shape[0] if raw_r and rescale == "minmax" and raw_r.dtype != np.uint8 else 0
        )
        info: dict = {"shape": list(shape)}
        with atomic_h5(output) as fh, ProgressBar(f"convert {output.name}", total, progress) as bar:
            fh.attrs[OWNER_ATTR] = "convert"  # this file is hpcffn's to replace (io/ownership.py)
            if raw_r:
                lo = hi = 0.0
                if rescale == "minmax" and raw_r.dtype != np.uint8:
                    lo, hi = _min_max(raw_r, step)
                    bar.advance(shape[0])
                    info["raw_range"] = [lo, hi]
                ds = fh.create_dataset(
                    raw_dataset, shape=shape, dtype=np.uint8, chunks=_chunks(shape), compression="gzip",
                    compression_opts=1,
                )
                def read_uint8(a, b, raw_r=raw_r, lo=lo, hi=hi):
                    block = raw_r.read(a, b)
                    if rescale == "dtype":
                        check_float_range(raw_r.name, block, a)
                    return _to_uint8(block, rescale, lo, hi)

                if clahe:
                    from hpcffn.stages.clahe import clahe_slabs

                    blocks = clahe_slabs(read_uint8, shape[0], step, clahe["kernel_size"], clahe["clip_limit"])
                else:
                    blocks = ((z0, read_uint8(z0, min(shape[0], z0 + step))) for z0 in range(0, shape[0], step))
                for z0, block in blocks:
                    ds[z0:z0 + len(block)] = block
                    bar.advance(len(block))
                ds.attrs["source"] = raw_r.name
                ds.attrs["rescale"] = rescale if raw_r.dtype != np.uint8 else "none"
                if clahe:
                    ds.attrs["clahe_kernel_size"] = list(clahe["kernel_size"])
                    ds.attrs["clahe_clip_limit"] = clahe["clip_limit"]
            if gt_r:
                ds = fh.create_dataset(
                    gt_dataset, shape=shape, dtype=np.uint64, chunks=_chunks(shape), compression="gzip",
                    compression_opts=1, shuffle=True,
                )

                def write(z0, ids, ds=ds):
                    ds[z0:z0 + len(ids)] = ids

                def read_back(z0, z1, ds=ds):
                    return ds[z0:z1]

                info["objects"] = label_volume(
                    gt_r, write, read_back, polarity, connectivity, step, bar.advance
                )
                _check_objects(gt_r.name, info["objects"], polarity)
                ds.attrs["source"] = gt_r.name
                ds.attrs["polarity"] = polarity
                if polarity != "labels":
                    ds.attrs["connectivity"] = connectivity
        return info
    finally:
        for r in readers:
            r.close()


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
        rescale = rescale or vol.rescale
        connectivity = connectivity or vol.connectivity
        info = convert(
            target,
            raw=vol.raw_source if want_raw else None,
            groundtruth=vol.groundtruth_source if want_gt else None,
            polarity=vol.polarity,
            rescale=rescale,
            raw_dataset=raw_loc.dataset,
            gt_dataset=gt_loc.dataset if gt_loc else "stack",
            connectivity=connectivity,
            slab=slab,
            overwrite=True,  # our own output of an earlier run
            progress=progress,
            expected_shape=vol.shape,
            clahe=planned_clahe(plan) if want_raw else None,
        )
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


def planned_clahe(plan) -> dict | None:
    """The spec's convert.clahe settings when it is enabled (None otherwise)."""
    clahe = (plan.spec.get("convert") or {}).get("clahe") or {}
    if not clahe.get("enabled"):
        return None
    return {"kernel_size": clahe["kernel_size"], "clip_limit": clahe["clip_limit"]}


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
