"""HDF5 volume locations ("path.h5:dataset"), shapes and box reads, with one-line errors.

Shared by every stage. A location is a file path and a dataset name separated by the
last ':' (so Windows-like or URL-like paths are not split wrongly); the dataset defaults to
the caller's default (`raw` for grayscale, `stack` for groundtruth, FFN's names).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcffn.core.errors import HpcffnError

if TYPE_CHECKING:  # only named in annotations: `hpcffn plan` imports this module without numpy
    import numpy as np

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
ZARR_SUFFIXES = (".zarr",)  # an OME-Zarr store (the stitched volume): "v.ome.zarr:seg", ":raw", ":labels/seg/1"
ARRAY_SUFFIXES = HDF5_SUFFIXES + ZARR_SUFFIXES
TIF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Location:
    """A dataset inside an HDF5 file."""

    path: Path
    dataset: str

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}"


def parse_location(text: str, default_dataset: str | None = None, base: Path | None = None) -> Location:
    """Split "path.h5:dataset" (dataset optional when a default is given)."""
    text = str(text)
    path_part, dataset = text, None
    head, sep, tail = text.rpartition(":")
    # HDF5 names may be written absolute (`gt.h5:/stack`); they mean the same dataset.
    tail = tail.lstrip("/")
    if sep and tail and not tail.startswith("\\") and head.lower().rstrip("/").endswith(ARRAY_SUFFIXES):
        path_part, dataset = head, tail
    if dataset is None:
        if default_dataset is None:
            raise HpcffnError(f"{text!r} has no dataset: write it as path.h5:dataset")
        dataset = default_dataset
    path = Path(path_part).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return Location(path=path, dataset=dataset)


def list_datasets(h5file) -> list[str]:
    """Names of every dataset in an open h5py file (nested ones as a/b)."""
    import h5py

    names: list[str] = []
    h5file.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


@contextmanager
def open_dataset(loc: Location | str, default_dataset: str | None = None,
                 cache_bytes: int | None = None) -> Iterator[h5py.Dataset]:  # noqa: F821
    """Open a dataset read-only; missing file or dataset -> one line listing what exists.

    `cache_bytes` sizes HDF5's chunk cache (default 1 MB): thin slabs of a compressed
    dataset decompress each chunk again unless a whole row of chunks stays cached.
    """
    import h5py

    if not isinstance(loc, Location):
        loc = parse_location(loc, default_dataset)
    if loc.path.name.lower().endswith(ZARR_SUFFIXES):
        from hpcffn.io.ome_zarr import open_array

        array = open_array(loc.path, loc.dataset)  # zarr arrays slice like h5py datasets; nothing to close
        _refuse_empty(loc, array.shape)
        yield array
        return
    if not loc.path.is_file():
        raise HpcffnError(f"HDF5 file {loc.path} does not exist: check the path (dataset {loc.dataset!r})")
    try:
        fh = h5py.File(loc.path, "r", **({"rdcc_nbytes": int(cache_bytes)} if cache_bytes else {}))
    except OSError as exc:
        raise HpcffnError(f"{loc.path} is not a readable HDF5 file ({exc})") from None
    try:
        if loc.dataset not in fh or not isinstance(fh[loc.dataset], h5py.Dataset):
            present = ", ".join(list_datasets(fh)) or "none"
            raise HpcffnError(
                f"{loc.path} has no dataset {loc.dataset!r} (datasets present: {present}); "
                f"write it as {loc.path}:<dataset>"
            )
        ds = fh[loc.dataset]
        _refuse_empty(loc, ds.shape)
        check_filters(loc, ds)
        yield ds
    finally:
        fh.close()


def _refuse_empty(loc: Location, shape) -> None:
    """A dataset with a zero-length axis holds no voxels: every stage would fail deep inside on it."""
    if 0 in tuple(shape):
        raise HpcffnError(f"{loc}: dataset is empty (shape {tuple(shape)}); point at the dataset with the data")


def check_filters(loc: Location, ds) -> None:
    """An HDF5 dataset compressed with a filter this HDF5 library cannot apply (Blosc, LZ4, Zstd...
    come as plugins) cannot be read: say which filter, and the fix, before the first read fails."""
    import h5py

    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        # Optional or not (hdf5plugin marks its filters optional), chunks written through it
        # cannot be decoded without it.
        if h5py.h5z.filter_avail(code):
            continue
        label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        raise HpcffnError(
            f"{loc}: dataset is compressed with HDF5 filter {code} ({label or 'unnamed'}), which is not installed "
            "here: install its plugin and point HDF5_PLUGIN_PATH at it (pip install hdf5plugin; its folder is hdf5plugin.PLUGIN_PATH) or save the "
            "dataset with gzip or no compression (h5repack -f GZIP=1)"
        )


def dataset_shape(loc: Location | str, default_dataset: str | None = None) -> tuple[int, ...]:
    with open_dataset(loc, default_dataset) as ds:
        return tuple(int(s) for s in ds.shape)


def read_box(loc: Location | str, start, size, default_dataset: str | None = None) -> np.ndarray:
    """Read a z,y,x box; parts outside the volume are an error (boxes come from the plan)."""
    with open_dataset(loc, default_dataset) as ds:
        if ds.ndim != 3:
            raise HpcffnError(f"{loc}: dataset has {ds.ndim} dimensions, expected 3 (z,y,x)")
        stop = [s + n for s, n in zip(start, size)]
        if any(s < 0 for s in start) or any(e > d for e, d in zip(stop, ds.shape)):
            raise HpcffnError(
                f"{loc}: box start {tuple(start)} size {tuple(size)} lies outside the dataset "
                f"shape {tuple(ds.shape)}; re-plan with the right volume shape"
            )
        return ds[tuple(slice(s, e) for s, e in zip(start, stop))]


def segmentation_box(loc: Location) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(offset, shape) of a segmentation: its `offset` attribute (0,0,0 if absent) and its shape.

    Infer outputs record where their box lies in the volume (on the dataset and the file).
    """
    with open_dataset(loc) as ds:
        if ds.ndim != 3:
            raise HpcffnError(f"{loc}: dataset has {ds.ndim} dimensions, expected a 3-D (z,y,x) segmentation")
        return dataset_offset(ds), tuple(int(s) for s in ds.shape)  # type: ignore[return-value]


def dataset_offset(ds) -> tuple[int, int, int]:
    """An open dataset's `offset` attribute, or its file's, or (0,0,0)."""
    return tuple(int(v) for v in ds.attrs.get("offset", ds.file.attrs.get("offset", (0, 0, 0))))  # type: ignore[return-value]


@contextmanager
def atomic_h5(path: str | Path):
    """A new HDF5 file, written beside `path` and renamed onto it when the block succeeds.

    On failure the temp file is emptied before HDF5 closes it: with the disk full, HDF5 can
    flush nothing, keeps the file open, and the process dies with a segfault at exit. Disk
    full becomes one line naming the folder; nothing at `path` is replaced.
    """
    import os
    import sys

    import h5py

    from hpcffn.core.atomic import atomic_path
    from hpcffn.core.errors import DiskFull

    with atomic_path(path, suffix=".h5") as tmp:
        fh = h5py.File(tmp, "w")
        previous_hooks = sys.unraisablehook, sys.excepthook
        # h5py reports a flush that failed while one of its objects is freed (inside h5py, before
        # the except below) as an "Exception ignored" traceback (through both hooks): disk full is
        # reported once, below.
        sys.unraisablehook = lambda u: None if _disk_full(u.exc_value) else previous_hooks[0](u)
        sys.excepthook = lambda t, v, tb: None if _disk_full(v) else previous_hooks[1](t, v, tb)
        try:
            yield fh
            fh.close()
        except BaseException as exc:
            os.truncate(tmp, 0)  # frees the blocks, so the close below can flush
            if _disk_full(exc):
                # Closing would flush again into the full disk (and print "Exception ignored"
                # tracebacks); the file and the objects in the exception's frames stay open
                # instead, and the CLI ends the process before HDF5's exit-time clean-up.
                _UNFLUSHABLE.append((exc, fh))
                raise DiskFull(f"no space left on the device of {Path(path).parent} while writing "
                               f"{Path(path).name}: free space there and run again (nothing was replaced)") from None
            with suppress(Exception):  # the first error is the one to report
                fh.close()
            raise
        finally:
            sys.unraisablehook, sys.excepthook = previous_hooks


_UNFLUSHABLE: list = []


def _disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, (OSError, RuntimeError)) and (
        getattr(exc, "errno", None) == 28 or "No space left on device" in str(exc))
