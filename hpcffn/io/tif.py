"""Stream volumes slice by slice: a multi-page TIF, a directory of TIF slices, or HDF5.

Conversion must handle stacks larger than memory, so every reader here knows its z,y,x
shape and dtype from headers alone and hands out slabs of consecutive slices. Slice files
are ordered by natural sort (slice2 before slice10), the order the planner uses
(`tif_slices`). Problems (empty directory, slice of another size or dtype,
colour images) are one-line HpcffnErrors naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from hpcffn.core.errors import HpcffnError
from hpcffn.io.volumes import ARRAY_SUFFIXES, TIF_SUFFIXES

if TYPE_CHECKING:  # numpy is imported where pixels or dtypes are handled: planning imports this module
    import numpy as np


class VolumeReader:
    """Shape/dtype from metadata, `read(z0, z1)` returns slices z0..z1-1 as a z,y,x array."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    name: str

    def read(self, z0: int, z1: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(name)]


def tif_slices(directory: Path) -> list[Path]:
    """The .tif/.tiff files of a slice directory in z order (natural sort: 2 before 10)."""
    files = [p for p in Path(directory).iterdir() if p.is_file() and p.name.lower().endswith(TIF_SUFFIXES)
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: _natural_key(p.name))


def page_info(path: Path) -> tuple[tuple[int, ...], np.dtype, int, str]:
    """(shape of the first page, dtype, number of pages, axes) of a TIF, from headers.

    A hyperstack (ImageJ's ZCYX, TZYX ...) is refused here: its pages interleave channels or
    time points, and reading them as z slices would give a volume of mixed slices.
    """
    import numpy as np
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            series = tif.series[0]
            _refuse_hyperstack(path, series.axes, tuple(int(s) for s in series.shape))
            return tuple(int(s) for s in page.shape), np.dtype(page.dtype), len(tif.pages), series.axes
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise HpcffnError(f"{path} is not a readable TIF file ({exc})") from None


# tifffile's axis letters that are not a page's own y, x or samples (colour): z, channel, time...
_PAGE_AXES = set("YXS")


def _refuse_hyperstack(path: Path, axes: str, shape: tuple[int, ...]) -> None:
    """More than one axis besides y,x with a size above 1 (z and channels, z and time) is refused."""
    stacked = [(a, n) for a, n in zip(axes, shape) if a not in _PAGE_AXES and n > 1]
    if len(stacked) > 1:
        sizes = ", ".join(f"{_AXIS_NAMES.get(a, a)} {n}" for a, n in stacked)
        raise HpcffnError(
            f"{path} is a hyperstack (axes {axes}, shape {shape}: {sizes}); its pages interleave "
            f"{' and '.join(_AXIS_NAMES.get(a, a) for a, _ in stacked)} and would not be z slices: save the one "
            "channel/time point you segment as its own grayscale stack (Fiji: Image > Color > Split Channels, "
            "or Image > Duplicate with one channel)"
        )


_AXIS_NAMES = {"Z": "z slices", "C": "channels", "T": "time points", "Q": "pages", "I": "pages"}


def _pixels(what, read) -> np.ndarray:
    """Pixel data of a slice/page; a truncated or damaged file is a one-line error, not a traceback.

    A compression whose codec is not installed (LZW, JPEG, ZSTD... come from imagecodecs) is
    named as such: the file is fine, the reader lacks the codec.
    """
    import tifffile

    try:
        return read()
    except (KeyError, ValueError) as exc:
        # tifffile: "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package" (KeyError or ValueError)
        text = str(exc.args[0]) if exc.args else str(exc)
        if "imagecodecs" in text:
            raise HpcffnError(f"{what}: compressed with a codec that is not installed ({text}): the file is fine; "
                              "install imagecodecs (pip install imagecodecs, part of hpcffn's dependencies) or "
                              "save the slices uncompressed") from None
        if isinstance(exc, KeyError):
            raise
        raise HpcffnError(f"{what}: the pixel data cannot be read ({type(exc).__name__}: {exc}); the file is "
                          "truncated or damaged: copy it again") from None
    except (OSError, EOFError, IndexError, tifffile.TiffFileError) as exc:
        raise HpcffnError(f"{what}: the pixel data cannot be read ({type(exc).__name__}: {exc}); the file is "
                          "truncated or damaged: copy it again") from None


def check_gray(path: Path, shape, axes: str) -> None:
    if len(shape) != 2:
        raise HpcffnError(
            f"{path} has pages of shape {shape} (axes {axes}); expected grayscale 2-D slices "
            "(save it as a grayscale stack)"
        )


def stack_shape(path: Path) -> tuple[int, int, int]:
    """(pages, y, x) of a TIF whose pages are 2-D grayscale slices, from headers only."""
    shape, _dtype, pages, axes = page_info(path)
    check_gray(path, shape, axes)
    return (pages, shape[0], shape[1])


class TifDirectory(VolumeReader):
    """A directory of single-slice TIF files, z = natural-sort order of the file names."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory)
        self.name = str(self.path)
        if not self.path.is_dir():
            raise HpcffnError(f"{self.path} is not a directory of TIF slices")
        self.files = tif_slices(self.path)
        if not self.files:
            raise HpcffnError(f"{self.path} contains no .tif/.tiff slices; point at the directory holding the slices")
        shape0, dtype0, pages, axes = page_info(self.files[0])
        check_gray(self.files[0], shape0, axes)
        # Every slice's header is checked up front, so a bad slice fails before any writing.
        for f in self.files[1:]:
            shape, dtype, pages, axes = page_info(f)
            if pages != 1:
                raise HpcffnError(
                    f"{f} holds {pages} pages but the files of a slice directory must be single 2-D slices"
                )
            if shape != shape0:
                raise HpcffnError(
                    f"{f} is {shape[0]}x{shape[-1]} (y x x) but {self.files[0].name} is "
                    f"{shape0[0]}x{shape0[1]}: every slice of {self.path} must have the same size"
                )
            if dtype != dtype0:
                raise HpcffnError(
                    f"{f} has dtype {dtype} but {self.files[0].name} has {dtype0}: slices of {self.path} "
                    "must share one dtype (re-save them with the same bit depth)"
                )
        self.shape = (len(self.files), shape0[0], shape0[1])
        self.dtype = dtype0

    def read(self, z0: int, z1: int) -> np.ndarray:
        import numpy as np
        import tifffile

        out = np.empty((z1 - z0,) + self.shape[1:], dtype=self.dtype)
        for i, f in enumerate(self.files[z0:z1]):
            img = _pixels(f, lambda f=f: tifffile.imread(f))
            if img.shape != self.shape[1:] or img.dtype != self.dtype:
                raise HpcffnError(f"{f} changed while converting (now {img.shape} {img.dtype}); re-run convert")
            out[i] = img
        return out


class TifStack(VolumeReader):
    """A multi-page TIF, one page per z slice (kept open while streaming)."""

    def __init__(self, path: str | Path):
        import numpy as np
        import tifffile

        self.path = Path(path)
        self.name = str(self.path)
        if not self.path.is_file():
            raise HpcffnError(f"TIF stack {self.path} does not exist: check the path")
        shape0, dtype0, pages, axes = page_info(self.path)
        check_gray(self.path, shape0, axes)
        self._tif = tifffile.TiffFile(self.path)
        self._pages = self._tif.pages
        # Every page's header (not only the first and last): a page of another size in the
        # middle would otherwise be found by convert, after a queue wait.
        for i in range(pages):
            page = self._pages[i]
            if tuple(page.shape) != shape0 or np.dtype(page.dtype) != dtype0:
                self._tif.close()
                raise HpcffnError(
                    f"{self.path}: page {i} is {tuple(page.shape)} {page.dtype} but page 0 is {shape0} {dtype0}; "
                    "every page of a stack must have the same size and dtype"
                )
        self.shape = (pages, shape0[0], shape0[1])
        self.dtype = dtype0

    def read(self, z0: int, z1: int) -> np.ndarray:
        import numpy as np

        out = np.empty((z1 - z0,) + self.shape[1:], dtype=self.dtype)
        for i in range(z0, z1):
            page = self._pages[i]
            if tuple(page.shape) != self.shape[1:] or np.dtype(page.dtype) != self.dtype:
                raise HpcffnError(
                    f"{self.path}: page {i} is {tuple(page.shape)} {page.dtype} but page 0 is "
                    f"{self.shape[1:]} {self.dtype}; every page must have the same size and dtype"
                )
            out[i - z0] = _pixels(f"{self.path} page {i}", page.asarray)
        return out

    def close(self) -> None:
        self._tif.close()


class Hdf5Volume(VolumeReader):
    """A 3-D HDF5 dataset read in z slabs."""

    def __init__(self, location: str, default_dataset: str):
        import h5py
        import numpy as np

        from hpcffn.io.volumes import parse_location

        self.loc = parse_location(location, default_dataset)
        self.name = str(self.loc)
        self._cm = None
        from hpcffn.io.volumes import open_dataset

        self._cm = open_dataset(self.loc)
        self._ds: h5py.Dataset = self._cm.__enter__()
        if self._ds.ndim != 3:
            shape = self._ds.shape
            self.close()
            raise HpcffnError(f"{self.loc}: dataset has shape {shape}, expected 3 dimensions (z,y,x)")
        self.shape = tuple(int(s) for s in self._ds.shape)
        self.dtype = np.dtype(self._ds.dtype)

    def read(self, z0: int, z1: int) -> np.ndarray:
        return self._ds[z0:z1]

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


def open_volume(text: str, default_dataset: str = "raw") -> VolumeReader:
    """A reader for "path.h5[:dataset]", a .tif/.tiff stack or a directory of slices."""
    path_text = str(text)
    head = path_text.rpartition(":")[0]
    if path_text.lower().rstrip("/").endswith(ARRAY_SUFFIXES) or head.lower().endswith(ARRAY_SUFFIXES):
        return Hdf5Volume(path_text, default_dataset)  # HDF5 or OME-Zarr: both open with open_dataset
    p = Path(path_text).expanduser()
    if p.name.lower().endswith(TIF_SUFFIXES):
        return TifStack(p)
    if p.is_dir():
        return TifDirectory(p)
    if not p.exists():
        raise HpcffnError(f"{p} does not exist: give an HDF5 path.h5:dataset, a .tif stack or a directory of .tif slices")
    raise HpcffnError(f"{p} is neither an HDF5 file (.h5), a .tif/.tiff stack nor a directory of .tif slices")
