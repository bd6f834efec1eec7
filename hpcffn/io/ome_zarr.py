"""The stitched volume as OME-Zarr (NGFF 0.4, Zarr v2): geometry, metadata, and opening it.

Why Zarr v2 / NGFF 0.4: every chunk is written whole by exactly one task (the chunk grid is
cut along tile-core borders), so nothing needs the shards of Zarr v3 to stay parallel-safe;
v2 chunks are plain files that neuroglancer, napari, Fiji (MoBIE/n5-viewer) and every
zarr-python/TensorStore read today, while NGFF 0.5 (v3) readers are still catching up.
Chunks are nested (`dimension_separator: "/"`) so no folder holds a whole level's chunks.

    stitch/<volume>.ome.zarr/
      .zattrs                 multiscales of the raw image (uint8)
      0/ 1/ ... L/            raw, level s downsampled 2^s (mean)
      labels/.zattrs          {"labels": ["seg"]}
      labels/seg/.zattrs      multiscales + image-label
      labels/seg/0/ ... L/    the stitched segmentation, ids 1..K in the smallest unsigned dtype (mode)

Level s is ceil(shape / 2^s) on every axis; levels stop once one chunk holds a whole level.
Pure geometry here runs on the login node (the planner cuts pyramid work with it); zarr is
imported only where arrays are made or opened.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from hpcffn.core.errors import HpcffnError

if TYPE_CHECKING:  # numpy is imported where dtypes are made: the planner's geometry needs none of it
    import numpy as np

ZYX = tuple[int, int, int]
CHUNK_TARGET = 64  # voxels per chunk edge we aim for (a 64^3 chunk of uint64 is 2 MB raw)
MAX_LEVELS = 10
LABELS = "seg"
NGFF_VERSION = "0.4"


def chunk_edge(tile_edge: int, volume_edge: int) -> int:
    """A divisor of the tile edge near CHUNK_TARGET: tile cores start at multiples of the tile
    edge, so chunks of a divisor never straddle two cores (the last core runs to the volume's
    end, and the volume's last chunk is its alone)."""
    if volume_edge <= tile_edge:  # one tile along this axis: any chunk edge is aligned
        return max(1, min(volume_edge, CHUNK_TARGET))
    divisors = [d for d in range(1, tile_edge + 1) if tile_edge % d == 0]
    return min(divisors, key=lambda d: (abs(math.log(d / CHUNK_TARGET)), -d))


def chunk_shape(tile_size: ZYX, shape: ZYX) -> ZYX:
    return tuple(chunk_edge(t, s) for t, s in zip(tile_size, shape))  # type: ignore[return-value]


def level_shapes(shape: ZYX, chunks: ZYX) -> list[ZYX]:
    """Shapes of level 0..L: halve (rounding up) until one chunk covers the level."""
    out = [tuple(shape)]
    while len(out) < MAX_LEVELS and any(s > c for s, c in zip(out[-1], chunks)):
        out.append(tuple(-(-s // 2) for s in out[-1]))
    return out  # type: ignore[return-value]


def level_blocks(level_shape: ZYX, chunks: ZYX, tile_size: ZYX) -> list[tuple[ZYX, ZYX]]:
    """(start, size) blocks of whole chunks of one downsampled level, each made from at most a
    tile's worth of the level above (2x the block per axis): one pyramid task per block."""
    edges = _block_edges(chunks, tile_size)
    starts = [range(0, s, e) for s, e in zip(level_shape, edges)]
    return [((z, y, x), tuple(min(e, s - o) for o, e, s in zip((z, y, x), edges, level_shape)))
            for z in starts[0] for y in starts[1] for x in starts[2]]  # type: ignore[misc]


def _block_edges(chunks: ZYX, tile_size: ZYX) -> list[int]:
    return [c * max(1, t // (2 * c)) for c, t in zip(chunks, tile_size)]


def pyramid_blocks(shape, tile_size) -> list[list[tuple[ZYX, ZYX]]]:
    """Blocks of levels 1..L (list index 0 is level 1) of a volume tiled by `tile_size`."""
    chunks = chunk_shape(tuple(tile_size), tuple(shape))
    return [level_blocks(s, chunks, tuple(tile_size)) for s in level_shapes(tuple(shape), chunks)[1:]]


def pyramid_units(volume: str, shape, tile_size) -> list[list[str]]:
    """Per level 1..L the work units of its blocks, `<volume>_s<level>_b<block>` (stages/pyramid.py)."""
    chunks = chunk_shape(tuple(tile_size), tuple(shape))
    edges = _block_edges(chunks, tuple(tile_size))
    out = []
    for s, level in enumerate(level_shapes(tuple(shape), chunks)[1:], start=1):  # counted, not listed (100,000s)
        count = math.prod(len(range(0, n, e)) for n, e in zip(level, edges))
        out.append([f"{volume}_s{s}_b{k}" for k in range(count)])
    return out


def label_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0..max_id."""
    import numpy as np

    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise HpcffnError(f"{max_id} ids do not fit in 64 bits")


def multiscales(name: str, levels: int, method: str) -> list[dict]:
    """NGFF 0.4 `multiscales`: level s scales by 2^s, shifted so voxel centres line up."""
    datasets = []
    for s in range(levels):
        f = float(2 ** s)
        transform = [{"type": "scale", "scale": [f, f, f]}]
        if s:
            transform.append({"type": "translation", "translation": [(f - 1) / 2] * 3})
        datasets.append({"path": str(s), "coordinateTransformations": transform})
    return [{"version": NGFF_VERSION, "name": name, "type": method,
             "axes": [{"name": a, "type": "space"} for a in "zyx"], "datasets": datasets}]


def create(path: Path, shape: ZYX, chunks: ZYX, label_type: np.dtype, raw_type: np.dtype | str = "uint8") -> None:
    """Make the empty store (every level of raw and labels) at `path`, replacing an older one.

    Built beside the target and renamed into place, so a reader never sees half a store.
    """
    import shutil
    import tempfile

    import zarr
    from numcodecs import Blosc

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        root = zarr.open_group(str(tmp), mode="w")
        levels = level_shapes(shape, chunks)
        root.attrs["multiscales"] = multiscales("raw", len(levels), "mean")
        labels = root.require_group("labels")
        labels.attrs["labels"] = [LABELS]
        seg = labels.require_group(LABELS)
        seg.attrs["multiscales"] = multiscales(LABELS, len(levels), "mode")
        seg.attrs["image-label"] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
        codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
        for s, level in enumerate(levels):
            c = tuple(min(a, b) for a, b in zip(chunks, level))
            for group, dtype in ((root, raw_type), (seg, label_type)):
                group.create_dataset(str(s), shape=level, chunks=c, dtype=dtype, compressor=codec, fill_value=0,
                                     dimension_separator="/", write_empty_chunks=False)
        old = path.with_name(f".{path.name}.old-{os.getpid()}") if path.exists() else None
        if old is not None:
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def array_path(image: str, level: int = 0) -> str:
    """Path of a level inside the store: "raw" is the image at the root, anything else a label image."""
    return str(level) if image == "raw" else f"labels/{image}/{level}"


def open_array(path: Path, dataset: str, mode: str = "r"):
    """A zarr array of the store: `dataset` is "seg", "raw", "labels/seg/2", "0" ...; one-line errors.

    Read-only opens are checked: relabel and pyramid write every chunk of the volume (empty ones
    too), so a chunk file that is missing or shorter than its header says is damage, and reading
    it is a one-line error naming the store and the chunk, never background or a codec traceback.
    """
    import zarr

    if not (Path(path) / ".zgroup").is_file() and not (Path(path) / ".zarray").is_file():
        raise HpcffnError(f"{path} is not a Zarr store (no .zgroup): run the stitch jobs (`hpcffn submit --resume`)")
    key = dataset.strip("/")
    if key in ("raw", LABELS) or (not key.replace("/", "").isdigit() and "/" not in key):
        key = array_path(key)
    store = _store_class()(str(path), strict=mode == "r")
    try:
        return zarr.open_array(store, path=key, mode=mode)
    except (KeyError, ValueError, zarr.errors.ArrayNotFoundError, zarr.errors.ContainsGroupError):
        raise HpcffnError(f"{path} has no array {dataset!r}: use seg, raw, labels/seg/<level> or <level>") from None


# zarr's DirectoryStore writes chunk K of a row as `K.<32 hex>.partial` beside it, then renames it.
_PARTIAL = re.compile(r"^(\d+)\.[0-9a-f]{32}\.partial$")


def remove_partials(path: Path, level: int, start: ZYX, size: ZYX) -> list[Path]:
    """Delete the partial chunk files a killed writer of box (start, size) of `level` left, in
    raw and labels (what relabel and pyramid write), so they never pile up in the store.

    Call only as the box's one writer (under its unit's lock): every chunk has one task (relabel:
    a tile's core at level 0; pyramid: a block), so the partial files of these chunks are this
    task's own from an earlier, killed run, never another live writer's. One listing per chunk row.
    """
    import json

    removed = []
    for image in ("raw", LABELS):
        array = Path(path) / array_path(image, level)
        try:
            chunks = json.loads((array / ".zarray").read_text())["chunks"]
        except (OSError, ValueError, KeyError):
            continue
        cz, cy, cx = (range(s // c, -(-(s + n) // c)) for s, n, c in zip(start, size, chunks))
        for row in (array / str(i) / str(j) for i in cz for j in cy):
            try:
                names = [e.name for e in os.scandir(row)]
            except OSError:  # no chunk of this row written yet
                continue
            for name in names:
                m = _PARTIAL.match(name)
                if m and int(m.group(1)) in cx:
                    (row / name).unlink(missing_ok=True)
                    removed.append(row / name)
    return removed


_META = (".zarray", ".zattrs", ".zgroup", ".zmetadata")
_STORE_CLASS = None


def _store_class():
    """zarr's DirectoryStore with checked chunk reads, and writes whose errors name the chunk."""
    global _STORE_CLASS
    if _STORE_CLASS is not None:
        return _STORE_CLASS
    import zarr

    class CheckedStore(zarr.storage.DirectoryStore):
        def __init__(self, path: str, strict: bool):
            super().__init__(path)
            self.strict = strict

        def __getitem__(self, key):
            try:
                data = super().__getitem__(key)
            except KeyError:
                if self.strict and not key.endswith(_META):
                    raise HpcffnError(f"{self.path}: chunk {key} is missing (deleted, or never written): the stored "
                                      f"volume is damaged or its stitch has not finished; `hpcffn verify` lists "
                                      "every damaged chunk, and docs/stitch.md says how to rebuild") from None
                raise
            if not key.endswith(_META):
                check_chunk(self.path, key, data)
            return data

        def getitems(self, keys, *, contexts):
            if not self.strict:
                return super().getitems(keys, contexts=contexts)
            return {k: self[k] for k in keys}

        def __setitem__(self, key, value):
            from hpcffn.core.errors import DiskFull

            try:
                super().__setitem__(key, value)
            except OSError as exc:
                if exc.errno == 28:
                    raise DiskFull(f"{self.path}: cannot write chunk {key} (no space left on the device): free "
                                   "space there and run again") from None
                raise HpcffnError(f"{self.path}: cannot write chunk {key} ({exc.strerror or exc}); check the "
                                  "folder's permissions and space") from None

    _STORE_CLASS = CheckedStore
    return CheckedStore


def check_chunk(store, key: str, data: bytes, size: int | None = None) -> None:
    """A Blosc chunk records its compressed length (bytes 12-16): a file of another size was cut off.

    `data` is the chunk (or at least its first 16 bytes, with the file's `size`)."""
    size = len(data) if size is None else size
    if len(data) >= 2 and data[0] in (1, 2) and data[1] >= 1:  # Blosc-1 header: version, codec version
        length = int.from_bytes(bytes(data[12:16]), "little") if len(data) >= 16 else -1
        if length != size:
            raise HpcffnError(f"{store}: chunk {key} is truncated ({size} bytes, its header says {length}): "
                              "the stored volume is damaged; `hpcffn verify` lists every damaged chunk, and "
                              "docs/stitch.md says how to rebuild")
    elif size == 0:
        raise HpcffnError(f"{store}: chunk {key} is empty (0 bytes): the stored volume is damaged; "
                          "`hpcffn verify` lists every damaged chunk, and docs/stitch.md says how to rebuild")


def chunk_keys(shape, chunks) -> list[str]:
    """Keys ("i/j/k", nested) of every chunk of an array."""
    import itertools

    grid = [range(-(-s // c)) for s, c in zip(shape, chunks)]
    return ["/".join(map(str, idx)) for idx in itertools.product(*grid)]


def damaged_chunks(path: Path) -> list[str]:
    """Every chunk of every array of the store that is missing or truncated ("array/i/j/k: why")."""
    import json

    problems = []
    for meta in sorted(Path(path).rglob(".zarray")):
        array = meta.parent
        info = json.loads(meta.read_text())
        rel = array.relative_to(path).as_posix()
        for key in chunk_keys(info["shape"], info["chunks"]):
            f = array / key
            if not f.is_file():
                problems.append(f"{rel}/{key}: missing")
                continue
            with open(f, "rb") as fh:
                head = fh.read(16)
            try:
                check_chunk(path, f"{rel}/{key}", head, f.stat().st_size)
            except HpcffnError:
                problems.append(f"{rel}/{key}: truncated")
    return problems

