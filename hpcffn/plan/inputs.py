"""`hpcffn validate` looks at the data, not only the headers: a few sampled slices per input.

Wrong inputs that every stage accepts cost days: raw that is float 0..1 or bool trains on
nonsense, all-background groundtruth trains on background only, and groundtruth of the wrong
polarity turns the background into one huge object (found as `objects: 1` in a log after a
5-day training run). Reading SAMPLES evenly spaced z slices is cheap on a login node and
catches all of them. Convert checks the object count again on the full data.
"""

from __future__ import annotations

import numpy as np

from hpcffn.core.plan_model import Plan, VolumePlan

# How a white/black mask's polarity is judged (regions, not only coverage: dense groundtruth's
# objects cover 90% of a slice) lives in io/labeling.py, shared with convert.
WRONG_POLARITY = 0.9


def check_inputs(plan: Plan) -> tuple[list[str], list[str]]:
    """(errors, warnings) from sampling every volume's raw and groundtruth, each one line."""
    errors: list[str] = []
    warnings: list[str] = []
    for vol in plan.volumes:
        where = f"volume {vol.name}"
        if _exists(vol.raw_source, "raw"):
            _check_raw(vol, where, errors, warnings)
        if vol.groundtruth_source and _exists(vol.groundtruth_source, "stack"):
            _check_groundtruth(vol, where, errors, warnings)
    errors += check_checkpoints(plan)
    return errors, warnings


def check_checkpoints(plan: Plan) -> list[str]:
    """A checkpoint the spec names must be there now, not found missing by the first GPU job.

    Accepted as the stages accept them (ffn/tf1_import.resolve_checkpoint): a pretrained name,
    a checkpoint prefix (PREFIX.index exists), its .index file, or a directory of checkpoints.
    """
    from pathlib import Path

    from hpcffn.core.pretrained import pretrained

    errors = []
    for field, value in (("ffn.training.init_checkpoint", plan.ffn.training.init_checkpoint),
                         ("ffn.inference.checkpoint", plan.ffn.inference.checkpoint)):
        if not value or pretrained(value) is not None:
            continue
        p = Path(value)
        prefix = p.with_suffix("") if p.suffix == ".index" else p
        if p.is_dir() or Path(f"{prefix}.index").is_file():
            continue
        errors.append(f"field {field}: no checkpoint at {value} (neither a directory of checkpoints nor a prefix "
                      f"with {prefix}.index): fix the path, e.g. train/g0/ckpt-100, or name a pretrained model (fib25)")
    return errors


def _exists(location: str, default_dataset: str) -> bool:
    """Inputs planned before they are copied (declared shape) cannot be sampled yet."""
    from pathlib import Path

    from hpcffn.io.sources import classify

    return classify(location, default_dataset, Path("/")).exists


def sample_slices(location: str, default_dataset: str) -> tuple[np.dtype, list[np.ndarray]]:
    """dtype and SAMPLES z slices (evenly spaced) of an input, as its readers see it."""
    from hpcffn.io.labeling import sampled_planes
    from hpcffn.io.tif import open_volume

    with open_volume(location, default_dataset) as reader:
        return np.dtype(reader.dtype), sampled_planes(reader)


def _check_raw(vol: VolumePlan, where: str, errors: list[str], warnings: list[str]) -> None:
    dtype, slices = sample_slices(vol.raw_source, "raw")
    in_place = vol.raw == vol.raw_source  # HDF5 raw is read as it is; TIF raw goes through convert's rescale
    if dtype == bool:
        errors.append(f"{where}: raw {vol.raw_source} is bool (a mask?), not grayscale: point raw at the image data")
        return
    if dtype != np.uint8 and in_place:
        lo, hi = min(float(s.min()) for s in slices), max(float(s.max()) for s in slices)
        errors.append(
            f"{where}: raw {vol.raw_source} is {dtype} (sampled values {lo:g}..{hi:g}) but FFN reads raw as uint8 "
            "grayscale 0..255: convert it with `hpcffn convert --raw SRC --rescale minmax --output raw.h5` "
            "and point raw at raw.h5:raw"
        )
        return
    if dtype != np.uint8 and not in_place:
        _check_rescale(vol, dtype, slices, where, errors, warnings)
    values = np.unique(np.concatenate([np.unique(s) for s in slices]))
    if len(values) == 1:
        warnings.append(f"{where}: raw {vol.raw_source} is {values[0]} in every sampled slice: is it the right dataset?")


def _check_rescale(vol: VolumePlan, dtype: np.dtype, slices: list[np.ndarray], where: str,
                   errors: list[str], warnings: list[str]) -> None:
    """Convert maps non-uint8 raw with the volume's `rescale`: say now what it would do to the data."""
    lo, hi = min(float(np.nanmin(s)) for s in slices), max(float(np.nanmax(s)) for s in slices)
    sampled = f"sampled values {lo:g}..{hi:g}"
    if vol.rescale == "none":
        errors.append(f"{where}: raw {vol.raw_source} is {dtype} ({sampled}), not uint8, and its rescale is none: "
                      "set rescale: minmax (the stack's min..max to 0..255) or rescale: dtype (the dtype's full "
                      "range) on the volume")
    elif vol.rescale == "dtype" and dtype.kind == "f" and (lo < 0 or hi > 1):
        errors.append(f"{where}: raw {vol.raw_source} is {dtype} ({sampled}) but rescale dtype maps float 0..1 to "
                      "0..255, so everything above 1 becomes 255: set rescale: minmax on the volume")
    elif vol.rescale == "dtype" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        scale = 255.0 / (float(info.max) - float(info.min))
        a, b = (round((v - float(info.min)) * scale) for v in (lo, hi))
        if b - a < 64:
            warnings.append(f"{where}: raw {vol.raw_source} is {dtype} ({sampled}); rescale dtype maps them to "
                            f"{a}..{b} of 0..255 (little contrast): rescale: minmax would use the whole range")


def _check_groundtruth(vol: VolumePlan, where: str, errors: list[str], warnings: list[str]) -> None:
    from hpcffn.io.labeling import foreground, polarity_findings

    src = vol.groundtruth_source
    dtype, slices = sample_slices(src, "stack")
    if vol.polarity == "labels":
        if not (np.issubdtype(dtype, np.integer) or dtype == bool):
            errors.append(f"{where}: groundtruth {src} is {dtype}; polarity labels needs integer ids (or set "
                          "polarity white/black for a mask)")
            return
        fg = [s != 0 for s in slices]
    else:
        fg = [foreground(s, vol.polarity) for s in slices]
    voxels = sum(m.size for m in fg)
    fraction = sum(int(m.sum()) for m in fg) / max(voxels, 1)
    sampled = f"{len(slices)} sampled slices"
    if fraction == 0:
        errors.append(f"{where}: groundtruth {src} has no object voxels in {sampled} (all background with polarity "
                      f"{vol.polarity}): training would learn background only; check the dataset and polarity")
        return
    if vol.polarity in ("white", "black"):
        errs, warns = polarity_findings(slices, vol.polarity, src)
        errors += [f"{where}: {e}" for e in errs]
        warnings += [f"{where}: {w}" for w in warns]
    else:
        ids, counts = np.unique(np.concatenate([s[s != 0] for s in slices]), return_counts=True)
        # A black/white TIF read as ids: one id, 255 (or the dtype's top), whatever it covers.
        top = dtype != bool and len(ids) == 1 and int(ids[0]) == int(np.iinfo(dtype).max)
        if len(ids) == 1 and (counts[0] / voxels >= WRONG_POLARITY or top):
            warnings.append(f"{where}: groundtruth {src} is one object (id {ids[0]}) over {counts[0] / voxels:.0%} "
                            f"of {sampled}: is it a mask? then set polarity white or black")
