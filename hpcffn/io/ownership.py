"""Which files at hpcffn's output paths hpcffn wrote itself, so it never replaces a user's file.

Convert replaces WORKDIR/data/<volume>.h5 whole. A file found there is hpcffn's own when it
carries the attribute `convert` writes (OWNER_ATTR) or when the volume's convert marker
exists (a file converted before the attribute was written); anything else is the user's.
"""

from __future__ import annotations

import os
from pathlib import Path

OWNER_ATTR = "hpcffn_output"


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (symlinks and `..` followed)."""
    return os.path.realpath(a) == os.path.realpath(b)


def written_by_hpcffn(path: str | Path, marker: str | Path | None = None) -> bool:
    """Whether the existing HDF5 file `path` is hpcffn's own output (attribute or marker)."""
    if marker is not None and Path(marker).is_file():
        return True
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return OWNER_ATTR in fh.attrs
    except (OSError, ValueError):
        return False
