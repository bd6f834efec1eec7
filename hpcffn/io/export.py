"""`hpcffn export`: an HDF5 volume (a stitched or tile segmentation, `raw`, `stack`, `af`) as TIF.

Labs look at results in Fiji and compare them with the TIF stacks they started from, so a
segmentation goes back out the way data came in: a directory of slices (`<name>_0000.tif`,
natural order) or one multi-page TIF. Ids are written as the smallest unsigned type that holds
them (uint8/16/32); ids beyond uint32 cannot be shown by Fiji and are an error. Streams slab by
slab; the output appears complete or not at all (written beside it, then renamed), and an
existing output is replaced only with `overwrite`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.io.tif import Hdf5Volume
from hpcffn.io.volumes import TIF_SUFFIXES

SLAB = 16


def smallest_dtype(volume: Hdf5Volume) -> np.dtype:
    """uint8/16/32 large enough for the volume's values (a pass over it), or its float/int dtype."""
    if volume.dtype.kind == "f" or volume.dtype == np.uint8:
        return volume.dtype
    low, high = 0, 0
    for z in range(0, volume.shape[0], SLAB):
        block = volume.read(z, z + SLAB)
        if block.size:
            low, high = min(low, int(block.min())), max(high, int(block.max()))
    if low < 0:
        return volume.dtype
    for dtype in (np.uint8, np.uint16, np.uint32):
        if high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise HpcffnError(f"{volume.name}: ids up to {high} do not fit in 32 bits, which is the most TIF viewers show; "
                      "relabel the segmentation (ids 1..N) first")


def export_tif(source: str, output: str | Path, default_dataset: str = "seg", overwrite: bool = False) -> dict:
    """Write `source` ("path.h5[:dataset]") to `output`: a .tif/.tiff file (multi-page) or a directory of slices."""
    import tifffile

    output = Path(output)
    stack = output.name.lower().endswith(TIF_SUFFIXES)
    if output.exists() and not overwrite:
        raise HpcffnError(f"{output} already exists; remove it or choose another output (pass --overwrite to replace it)")
    with Hdf5Volume(source, default_dataset) as volume:
        dtype = smallest_dtype(volume)
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
        try:
            digits = max(4, len(str(volume.shape[0] - 1)))
            target = tmp / output.name if stack else tmp
            big = dtype.itemsize * int(np.prod(volume.shape)) > 2**31  # classic TIF ends at 4 GB
            writer = tifffile.TiffWriter(target, bigtiff=big) if stack else None
            try:
                for z in range(0, volume.shape[0], SLAB):
                    block = volume.read(z, z + SLAB).astype(dtype, copy=False)
                    for i, plane in enumerate(block):
                        if writer is not None:
                            writer.write(plane, contiguous=True)
                        else:
                            tifffile.imwrite(tmp / f"{output.stem}_{z + i:0{digits}d}.tif", plane)
            finally:
                if writer is not None:
                    writer.close()
            _replace(target if stack else tmp, output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"output": str(output), "slices": volume.shape[0], "shape": list(volume.shape), "dtype": str(dtype),
            "form": "multi-page TIF" if stack else "directory of slices"}


def _replace(new: Path, output: Path) -> None:
    """Move the finished export into place; an old output (only with overwrite) goes last."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(new, output)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
