"""Stage 2: FFN's class-balanced training coordinates (what build_coordinates.py writes).

Semantics, as Google's tool: voxels within `margin` (z,y,x) of each partition volume's
border and voxels with value 255 are never sampled; every other value, background 0
included, is a class; every class is resampled to the size of the largest (each voxel of a
class appears max//n or max//n + 1 times, the extra copies going to a uniformly random
subset, which is what np.resize of a random permutation gives); then all records are
shuffled and written as GZIP TFRecord of Example{center: [x,y,z], label_volume_name}.

Bounded memory instead of FFN's Python tuple per voxel: pass 1 counts classes per slab;
pass 2 streams slabs again, expands each class's voxels into their copies (extra copies
chosen with sequential hypergeometric draws, so no global index list exists) and deals the
packed records (volume << 40 | flat index) into temporary shards at random; pass 3 shuffles
each shard in memory and writes it. A random shard per record + a uniform shuffle inside each
shard is a uniform shuffle of the whole stream.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpcffn.core.errors import HpcffnError
from hpcffn.core.progress import ProgressBar
from hpcffn.io.tfrecord import _MAX_COORD
from hpcffn.io.volumes import HDF5_SUFFIXES, Location, open_dataset, parse_location

IGNORE = 255
_VOL_SHIFT = 40
_INDEX_MASK = (1 << _VOL_SHIFT) - 1
_HYPERGEOMETRIC_LIMIT = 10**9 - 1
_MAX_SHARDS = 512
# HDF5 chunk cache for the slab reads: one row of our 64^3 chunks of a 500^2 plane (16 MB),
# so thin slabs do not decompress every chunk again (8x the work with the 1 MB default).
_CHUNK_CACHE = 16 << 20


@dataclass
class PartitionVolume:
    """One partition map: the name records carry and where its voxels sit in that volume."""

    name: str
    location: Location
    shape: tuple[int, int, int] = (0, 0, 0)
    offset: tuple[int, int, int] = (0, 0, 0)  # z,y,x of the file's [0,0,0] in the volume


def parse_input(text: str) -> PartitionVolume:
    """FFN's `name:path.h5:dataset` (dataset defaults to `af`)."""
    name, sep, rest = text.partition(":")
    # `af.h5:af` has no name: its file would otherwise be taken for the name.
    unnamed = name.lower().endswith(HDF5_SUFFIXES) and not any(
        p.lower().endswith(HDF5_SUFFIXES) for p in rest.split(":"))
    if not sep or not name or not rest or unnamed:
        raise HpcffnError(f"--input {text!r}: write it as name:path.h5:dataset (FFN's partition_volumes)")
    return PartitionVolume(name=name, location=parse_location(rest, "af"))


def _offset(location: Location, value, shape) -> tuple[int, int, int]:
    """The `offset` attribute (z,y,x start in the volume) checked: records hold 0 <= x,y,z < 2**35."""
    vals = np.asarray(value).reshape(-1)
    if (len(vals) != 3 or not np.all(np.isfinite(vals)) or np.any(vals < 0)
            or np.any(vals + np.asarray(shape) > _MAX_COORD)):
        raise HpcffnError(
            f"{location}: attribute offset {vals.tolist()} is not the z,y,x voxel start of the map in its volume "
            "(three integers >= 0); fix or delete the attribute"
        )
    return tuple(int(o) for o in vals)  # type: ignore[return-value]


def _slabs(shape_zyx, lo, hi, slab_voxels: int):
    plane = max(1, (hi[1] - lo[1]) * (hi[2] - lo[2]))
    step = max(1, slab_voxels // plane)
    for z in range(lo[0], hi[0], step):
        yield z, min(hi[0], z + step)


def _region(shape, margin):
    """FFN crops `margin` voxels per side; a margin of 0 keeps the axis (FFN's [0:-0] would empty it)."""
    lo = tuple(int(m) for m in margin)
    hi = tuple(n - m for n, m in zip(shape, margin))
    return lo, hi


def _hypergeometric(rng, good: int, bad: int, draws: int) -> int:
    """Number of `good` among `draws` drawn without replacement from good+bad."""
    if draws == 0 or good == 0:
        return 0
    if bad == 0:
        return draws
    if good <= _HYPERGEOMETRIC_LIMIT and bad <= _HYPERGEOMETRIC_LIMIT:
        return int(rng.hypergeometric(good, bad, draws))
    # numpy's exact sampler stops at 1e9 items; beyond that a binomial is indistinguishable.
    k = int(rng.binomial(draws, good / (good + bad)))
    return max(draws - bad, min(good, k))


def shard_prefix(output: str | Path) -> str:
    """Name start of the shard folder of one output, so its next run can find stale ones."""
    return f".hpcffn-coords-{Path(output).name}-"


class _Shards:
    """Temporary shard files of packed uint64 records (in memory when there is only one)."""

    def __init__(self, count: int, directory: Path | None, prefix: str = ".hpcffn-coords-"):
        self.count = count
        self._mem: list[np.ndarray] = []
        self._tmp = None
        self._files = []
        if count > 1:
            self._tmp = tempfile.TemporaryDirectory(prefix=prefix, dir=directory)
            self._paths = [Path(self._tmp.name) / f"shard{i:05d}.u64" for i in range(count)]
            self._files = [open(p, "wb") for p in self._paths]  # noqa: SIM115 - closed in close()

    def add(self, records: np.ndarray, rng) -> None:
        if self.count == 1:
            self._mem.append(records)
            return
        shard = rng.integers(0, self.count, size=len(records), dtype=np.uint16 if self.count < 65536 else np.uint32)
        order = np.argsort(shard, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=self.count))])
        rec = records[order]
        for i in range(self.count):
            if bounds[i + 1] > bounds[i]:
                self._files[i].write(rec[bounds[i]:bounds[i + 1]].tobytes())

    def __iter__(self):
        if self.count == 1:
            yield np.concatenate(self._mem) if self._mem else np.zeros(0, np.uint64)
            self._mem = []
            return
        for f in self._files:
            f.close()
        for p in self._paths:
            data = np.fromfile(p, dtype=np.uint64)
            p.unlink()
            yield data

    def close(self) -> None:
        for f in self._files:
            if not f.closed:
                f.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def build_coordinates(
    volumes: Sequence[PartitionVolume],
    output: str | Path,
    margin_zyx: Sequence[int],
    max_records: int | None = None,
    seed: int = 0,
    tmpdir: str | Path | None = None,
    slab_voxels: int = 1 << 18,
    block_records: int = 1 << 16,
    shard_records: int = 1 << 20,
    progress: bool = False,
) -> dict:
    """Write the coordinates TFRecord for `volumes`; returns a summary (counts per class).

    Three passes: count the voxels of each class (`_count_classes`), deal each class's
    resampled voxels into temporary shards (`_deal_into_shards`), shuffle each shard and write
    it (`_write_shuffled`). Peak memory is about 110 MB plus one shard (`shard_records` x 8
    bytes): slabs, blocks and the writer's buffers are kept to a few MB each.
    """
    if not volumes:
        raise HpcffnError("no partition volumes given: pass --input name:af.h5:af at least once")
    if len(volumes) >= (1 << 23):
        raise HpcffnError("too many partition volumes in one coordinates file (at most 8 million)")
    margin = tuple(int(m) for m in margin_zyx)
    if len(margin) != 3 or any(m < 0 for m in margin):
        raise HpcffnError(f"margin {margin_zyx!r} must be three non-negative integers z,y,x")
    # Two streams: which records (resampling) never depends on how they are shuffled, so the
    # memory setting (shard count) changes only the order.
    rng, deal = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))

    per_volume, totals = _count_classes(volumes, margin, slab_voxels)
    sampling = _Sampling.of(totals, max_records, len(volumes), margin)
    # Shards hold ~shard_records each (1 M x 8 bytes by default); past 512 of them (512 M
    # records, e.g. a whole group without max_records) shards grow instead, to stay within
    # open-file limits.
    n_shards = min(_MAX_SHARDS, max(1, -(-sampling.total_records // shard_records)))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if tmpdir is not None and not Path(tmpdir).is_dir():
        raise HpcffnError(f"--tmpdir {tmpdir} is not a directory; create it or choose another")
    shards = _Shards(n_shards, Path(tmpdir) if tmpdir else Path(output).parent, shard_prefix(output))

    try:
        with ProgressBar("coordinates", 2 * sampling.total_records, progress) as bar:
            _deal_into_shards(volumes, per_volume, margin, sampling, shards, rng, deal, slab_voxels, block_records,
                              bar.advance)
            written = _write_shuffled(volumes, shards, output, deal, block_records, bar.advance)
    finally:
        shards.close()
    if written != sampling.total_records:  # pragma: no cover - internal consistency
        raise RuntimeError(f"wrote {written} records, expected {sampling.total_records}")
    return {
        "records": int(written),
        "classes": {int(c): {"voxels": int(totals[c]), "records": int(sampling.per_class)} for c in sampling.classes},
        "volumes": len(volumes),
        "records_per_class": int(sampling.per_class),
    }


def _count_classes(volumes: Sequence[PartitionVolume], margin, slab_voxels: int) -> tuple[list, np.ndarray]:
    """Pass 1: each volume's shape and offset (set on it) and its voxel count per class."""
    per_volume = []
    totals = np.zeros(256, dtype=np.int64)
    for v in volumes:
        with open_dataset(v.location, cache_bytes=_CHUNK_CACHE) as ds:
            if ds.ndim != 3 or ds.dtype != np.uint8:
                raise HpcffnError(
                    f"{v.location}: expected a 3-D uint8 partition map (stage partitions output), "
                    f"found {ds.ndim}-D {ds.dtype}"
                )
            v.shape = tuple(int(n) for n in ds.shape)
            if int(np.prod(v.shape, dtype=np.int64)) > _INDEX_MASK:
                raise HpcffnError(f"{v.location}: volume too large for one partition file (>2**40 voxels)")
            v.offset = _offset(v.location, ds.attrs.get("offset", (0, 0, 0)), v.shape)
            lo, hi = _region(v.shape, margin)
            counts = np.zeros(256, dtype=np.int64)
            if all(h > low for low, h in zip(lo, hi)):
                for z0, z1 in _slabs(v.shape, lo, hi, slab_voxels):
                    slab = ds[z0:z1, lo[1]:hi[1], lo[2]:hi[2]]
                    counts += np.bincount(slab.reshape(-1), minlength=256)
            per_volume.append(counts)
            totals += counts
    totals[IGNORE] = 0
    return per_volume, totals


@dataclass
class _Sampling:
    """How many records each class gets: every class as many as the largest (or max_records
    shared out), as whole copies of each voxel plus `extra` voxels drawn once more."""

    classes: np.ndarray
    per_class: int
    copies: np.ndarray
    extra_left: np.ndarray
    members_left: np.ndarray

    @property
    def total_records(self) -> int:
        return self.per_class * len(self.classes)

    @classmethod
    def of(cls, totals: np.ndarray, max_records: int | None, n_volumes: int, margin) -> _Sampling:
        classes = np.flatnonzero(totals)
        if len(classes) == 0:
            raise HpcffnError(
                f"nothing to sample: every voxel of the {n_volumes} partition volume(s) is 255 or "
                f"within the margin {margin} (z,y,x); lower the margin or check the partitions"
            )
        largest = int(totals[classes].max())
        if max_records is not None:
            per_class = int(max_records) // len(classes)
            if per_class < 1:
                raise HpcffnError(
                    f"--max-records {max_records} is smaller than the number of classes ({len(classes)}); "
                    "raise it so every class gets at least one record"
                )
            per_class = min(per_class, largest)
        else:
            per_class = largest
        copies = np.zeros(256, dtype=np.int64)
        extra_left = np.zeros(256, dtype=np.int64)
        copies[classes] = per_class // totals[classes]
        extra_left[classes] = per_class % totals[classes]
        return cls(classes, per_class, copies, extra_left, totals.copy())


def _deal_into_shards(volumes, per_volume, margin, sampling: _Sampling, shards: _Shards, rng, deal,
                      slab_voxels: int, block_records: int, advance) -> None:
    """Pass 2: expand each class's voxels into their copies (packed volume id | flat index) and
    deal them into the shards."""
    classes = sampling.classes
    for vid, v in enumerate(volumes):
        lo, hi = _region(v.shape, margin)
        if not all(h > low for low, h in zip(lo, hi)) or per_volume[vid][classes].sum() == 0:
            continue
        plane = v.shape[1] * v.shape[2]
        with open_dataset(v.location, cache_bytes=_CHUNK_CACHE) as ds:
            for z0, z1 in _slabs(v.shape, lo, hi, slab_voxels):
                slab = ds[z0:z1, lo[1]:hi[1], lo[2]:hi[2]].reshape(-1)
                order = np.argsort(slab, kind="stable")
                bounds = np.concatenate([[0], np.cumsum(np.bincount(slab, minlength=256))])
                sy, sx = hi[1] - lo[1], hi[2] - lo[2]
                for c in classes:
                    m = int(bounds[c + 1] - bounds[c])
                    if m == 0:
                        continue
                    local = order[bounds[c]:bounds[c + 1]]
                    zz, rem = np.divmod(local, sy * sx)
                    yy, xx = np.divmod(rem, sx)
                    flat = ((zz + z0) * plane + (yy + lo[1]) * v.shape[2] + (xx + lo[2])).astype(np.uint64)
                    packed = flat | np.uint64(vid << _VOL_SHIFT)
                    left = sampling.extra_left
                    e = _hypergeometric(rng, int(left[c]), int(sampling.members_left[c] - left[c]), m)
                    left[c] -= e
                    sampling.members_left[c] -= m
                    for block in _expand(packed, int(sampling.copies[c]), e, rng, block_records):
                        shards.add(block, deal)
                        advance(len(block))


def _write_shuffled(volumes, shards: _Shards, output, deal, block_records: int, advance) -> int:
    """Pass 3: shuffle each shard, unpack records to (x, y, z) centres in global voxels and write
    them to the GZIP TFRecord (temp file, renamed when whole); returns the records written."""
    from hpcffn.core.atomic import atomic_path
    from hpcffn.io.tfrecord import GzipRecordWriter

    names = [v.name.encode("utf-8") for v in volumes]
    shapes = np.array([v.shape for v in volumes], dtype=np.int64)
    offsets = np.array([v.offset for v in volumes], dtype=np.int64)
    written = 0
    with atomic_path(output, suffix=".tfrecord.gz") as tmp, GzipRecordWriter(tmp, block_bytes=2 << 20) as writer:
        for shard in shards:
            deal.shuffle(shard)
            for i in range(0, len(shard), block_records):
                part = shard[i:i + block_records]
                vid = (part >> np.uint64(_VOL_SHIFT)).astype(np.int64)
                flat = (part & np.uint64(_INDEX_MASK)).astype(np.int64)
                rest, x = np.divmod(flat, shapes[vid, 2])
                z, y = np.divmod(rest, shapes[vid, 1])
                centers = np.stack([x + offsets[vid, 2], y + offsets[vid, 1], z + offsets[vid, 0]], axis=1)
                writer.write(centers, vid, names)
                written += len(part)
                advance(len(part))
    return written


def shard_records(shuffle_mb: int) -> int:
    """Records per in-memory shard for a `shuffle_mb` budget (8 bytes per packed record)."""
    return max(1, int(shuffle_mb) << 17)


def _expand(members: np.ndarray, k: int, extra: int, rng, block: int):
    """Yield `members` k times plus `extra` random ones once more, in blocks of <= ~block."""
    m = len(members)
    if extra:
        yield members[rng.choice(m, size=extra, replace=False)]
    if k == 0:
        return
    reps = max(1, block // m)
    full, rest = divmod(k, reps)
    if full:
        tiled = np.tile(members, reps) if reps > 1 else members
        for _ in range(full):
            yield tiled
    if rest:
        yield np.tile(members, rest)


def run_from_plan(plan, group_key, params=None, tmpdir=None, progress: bool | None = None) -> dict:
    """All partition maps of a group's tiles -> workdir/coordinates/<group>.tfrecord.gz."""
    from hpcffn.stages.markers import hold_unit, mark_done

    group = plan.group(group_key)
    tiles = plan.group_tiles(group.name)
    if not tiles:
        raise HpcffnError(f"group {group.name} has no tiles in the plan; re-run `hpcffn plan`")
    vols = []
    for t in tiles:
        path = plan.layout.partitions(t.name)
        if not path.is_file():
            raise HpcffnError(
                f"group {group.name}: partitions of tile {t.name} are missing ({path}); "
                f"run `hpcffn stage partitions --plan {plan.layout.plan} --tile {t.name}` first"
            )
        vols.append(PartitionVolume(name=t.volume, location=Location(path, "af")))
    c = params or plan.ffn.coordinates
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    out = plan.layout.coordinates(group.name)
    with hold_unit(plan, "coordinates", group.name, (out,), (shard_prefix(out),)):
        summary = build_coordinates(
            vols, out, c.margin, c.max_records, c.seed, tmpdir=tmpdir, progress=progress,
            shard_records=shard_records(c.shuffle_mb),
        )
        mark_done(plan, "coordinates", group.name, records=summary["records"])
    return summary
