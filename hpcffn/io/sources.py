"""What a volume input is (HDF5 dataset, multi-page TIF, directory of TIF slices) and its shape.

Planning needs only shapes, so nothing here reads pixels: HDF5 shapes come from the dataset
header, TIF shapes from the page headers (every slice's or page's, so one of another size or
dtype is refused when planning). The convert stage orders slices the same way: both use `hpcffn.io.tif.tif_slices`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpcffn.core.errors import HpcffnError
from hpcffn.io.tif import TifDirectory, TifStack, stack_shape, tif_slices
from hpcffn.io.volumes import HDF5_SUFFIXES, TIF_SUFFIXES, Location, parse_location

Kind = Literal["hdf5", "tif", "tifdir"]


@dataclass(frozen=True)
class Source:
    """One input as the user gave it, resolved to an absolute path."""

    kind: Kind
    path: Path
    dataset: str | None = None  # HDF5 only

    @property
    def location(self) -> str:
        """The "path.h5:dataset" string (HDF5) or the plain path (TIF inputs)."""
        return f"{self.path}:{self.dataset}" if self.kind == "hdf5" else str(self.path)

    @property
    def exists(self) -> bool:
        return self.path.is_dir() if self.kind == "tifdir" else self.path.is_file()


def classify(text: str, default_dataset: str, base: Path) -> Source:
    """Decide what kind of input `text` names; relative paths resolve against `base`."""
    loc: Location = parse_location(text, default_dataset, base)
    path = Path(_abspath(loc.path))
    name = path.name.lower()
    if name.endswith(HDF5_SUFFIXES):
        return Source("hdf5", path, loc.dataset)
    if name.endswith(TIF_SUFFIXES):
        return Source("tif", path)
    if path.is_file() or (path.suffix and not path.is_dir()):
        raise ValueError(
            f"{text!r} is neither an HDF5 file (.h5/.hdf5, optionally path.h5:dataset), "
            "a .tif/.tiff stack nor a directory of .tif slices"
        )
    return Source("tifdir", path)


def _abspath(path: Path) -> str:
    import os

    return os.path.normpath(os.path.abspath(path))


def read_shape(src: Source) -> tuple[int, int, int]:
    """The z,y,x shape of an existing input, from headers only. Raises HpcffnError."""
    if src.kind == "hdf5":
        from hpcffn.io.volumes import dataset_shape

        shape = dataset_shape(Location(src.path, src.dataset or "raw"))
        if len(shape) != 3:
            raise HpcffnError(
                f"{src.location}: dataset has shape {shape}, expected 3 dimensions (z,y,x); "
                "point at a 3-D grayscale or label dataset"
            )
        if 0 in shape:
            raise HpcffnError(f"{src.location}: dataset is empty (shape {shape}); point at the dataset with the data")
        return shape  # type: ignore[return-value]

    if src.kind == "tif":
        stack_shape(src.path)  # one-line errors for what is not a 3-D grayscale stack
        with TifStack(src.path) as stack:  # every page's header: one of another size is refused now
            return stack.shape
    files = tif_slices(src.path)
    if not files:
        raise HpcffnError(f"{src.path} contains no .tif/.tiff slices; point at the directory holding the slices")
    first = stack_shape(files[0])
    if first[0] != 1:
        raise HpcffnError(
            f"{files[0]} holds {first[0]} pages but the files of a slice directory must be single 2-D "
            "slices; give the multi-page file itself as the input instead"
        )
    # Every slice's header, not the first only: a slice of another size or dtype would
    # otherwise be found by convert, after a queue wait.
    with TifDirectory(src.path) as slices:
        return slices.shape
