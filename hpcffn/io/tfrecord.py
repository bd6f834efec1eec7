"""Bulk writer of FFN coordinate TFRecords: serialized tf.train.Example built with numpy.

Class-balanced coordinates are tens of millions of records per sub-volume; one protobuf
object and one CRC call per record (what FFN's build_coordinates does) costs minutes. Here a
batch of records is laid out as rows of a uint8 matrix (fixed slots, unused varint bytes
masked out), the CRC32C of every row is computed column by column across the whole batch,
and the valid bytes are compacted with one boolean index. No TensorFlow is needed to write.

Wire format (protobuf), byte-identical to
`tf.train.Example(...).SerializeToString(deterministic=True)` for
Example{features{feature{"center": int64_list[x,y,z]}, {"label_volume_name": bytes}}}
(map entries sorted by key; plain SerializeToString() may write them in either order,
which every parser accepts). TFRecord framing per record:
uint64 length, masked crc32c(length), data, masked crc32c(data). GZIP: one zlib stream with
a gzip header (what TFRecordOptions(compression_type="GZIP") reads).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected
_MASK_DELTA = 0xA282EAD8
_MAX_COORD = 1 << 35  # five varint bytes


def _make_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_T8 = _make_table()


def crc32c(data: bytes) -> int:
    """CRC32C of a small buffer (pure Python; for headers and tests)."""
    crc = 0xFFFFFFFF
    table = _T8
    for b in data:
        crc = int(table[(crc ^ b) & 0xFF]) ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(crc):
    """TFRecord's masking: rotate right by 15 and add a constant (works on ints and arrays)."""
    if isinstance(crc, np.ndarray):
        c = crc.astype(np.uint64)
        return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _MASK_DELTA & 0xFFFFFFFF).astype(np.uint32)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _process(state: np.ndarray, column: np.ndarray) -> np.ndarray:
    return _T8[(state ^ column) & 0xFF] ^ (state >> 8)


_SHIFT_CACHE: dict[int, np.ndarray] = {}


def _shift_tables(n: int) -> np.ndarray:
    """Tables Z[k][b] = CRC register b<<8k after n zero bytes (the register map is linear)."""
    if n not in _SHIFT_CACHE:
        states = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None])
        states = states.astype(np.uint32)
        zero = np.zeros(1, dtype=np.uint32)
        for _ in range(n):
            states = _process(states, zero)
        _SHIFT_CACHE[n] = states
    return _SHIFT_CACHE[n]


def _shift(state: np.ndarray, n: int) -> np.ndarray:
    z = _shift_tables(n)
    return z[0][state & 0xFF] ^ z[1][(state >> 8) & 0xFF] ^ z[2][(state >> 16) & 0xFF] ^ z[3][state >> 24]


def _register_after(data: bytes, state: int = 0) -> int:
    """CRC register after `data` starting from register `state` (no final xor)."""
    for b in data:
        state = int(_T8[(state ^ b) & 0xFF]) ^ (state >> 8)
    return state


_PREFIX_CACHE: dict[tuple[int, ...], np.ndarray] = {}


def _prefix_registers(name_lengths: tuple[int, ...]) -> np.ndarray:
    """table[P, j]: CRC register (init 0xFFFFFFFF) after a record's bytes up to its varints."""
    if name_lengths not in _PREFIX_CACHE:
        table = np.zeros((16, len(name_lengths)), dtype=np.uint32)
        for p in range(3, 16):
            for j, ne in enumerate(name_lengths):
                prefix = (
                    b"\x0a" + _varint(2 + 14 + p + ne) + bytes([0x0A, 14 + p]) + _CENTER_KEY
                    + bytes([0x12, 4 + p, 0x1A, 2 + p, 0x0A, p])
                )
                table[p, j] = _register_after(prefix, 0xFFFFFFFF)
        _PREFIX_CACHE[name_lengths] = table
    return _PREFIX_CACHE[name_lengths]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field_tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([field_tag]) + _varint(len(payload)) + payload


def name_entry(name: bytes) -> bytes:
    """The Features map entry for label_volume_name, with its field tag and length."""
    bytes_list = _ld(0x0A, name)  # BytesList.value
    feature = _ld(0x0A, bytes_list)  # Feature.bytes_list
    entry = _ld(0x0A, b"label_volume_name") + _ld(0x12, feature)
    return _ld(0x0A, entry)  # Features.feature (map entry)


# Column layout of one framed record (see module docstring).
_C_LEN, _C_LENCRC, _C_DATA = 0, 8, 12
_C_FL = 13  # two slots: Features length varint
_C_CENTER_KEY = 15  # map entry tag, entry length, then the 8 key bytes (0x0A 0x06 "center")
_C_FEATURE_TAG, _C_FEATURE_LEN = 25, 26  # map value: Feature (0x12) and its length
_C_INT64_LIST_TAG, _C_INT64_LIST_LEN = 27, 28  # Feature.int64_list (0x1A) and its length
_C_PACKED_TAG, _C_PACKED_LEN = 29, 30  # Int64List.value, packed (0x0A), and the varints' length P
_C_X = 31  # three varint slots x, y, z, each as wide as the batch's longest (<= 5 bytes)
_CENTER_KEY = bytes([0x0A, 0x06]) + b"center"


def _varint_len(v: np.ndarray) -> np.ndarray:
    n = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 5):
        n += v >= (1 << (7 * k))
    return n


def _field_view(rows: np.ndarray, offset: int, fmt: str) -> np.ndarray:
    """A strided view of one multi-byte little-endian field at `offset` of every row."""
    dt = np.dtype({"names": ["f"], "formats": [fmt], "offsets": [offset], "itemsize": rows.shape[1]})
    return rows.view(dt).reshape(-1)["f"]


def serialize_batch(centers: np.ndarray, volume_ids: np.ndarray, names: list[bytes]) -> bytes:
    """Framed TFRecord bytes for records (centers[i] = x,y,z, names[volume_ids[i]]), in order.

    Call with batches of ~64K records: the row matrix then stays in the CPU cache.
    """
    centers = np.asarray(centers, dtype=np.int64)
    vol = np.asarray(volume_ids, dtype=np.int64)
    n = len(centers)
    if n == 0:
        return b""
    if centers.min() < 0 or centers.max() >= _MAX_COORD:
        raise ValueError("coordinates must lie in [0, 2**35)")
    entries = [name_entry(nm) for nm in names]
    ne_len = np.array([len(e) for e in entries], dtype=np.int64)
    ne_max = int(ne_len.max())
    if ne_max > 16000:
        raise ValueError("volume names must be shorter than 16000 bytes")
    used = np.flatnonzero(np.bincount(vol, minlength=len(names)))  # (bincount: no sort)
    uniform_names = bool((ne_len[used] == ne_len[used[0]]).all())
    if uniform_names:
        ne_max = int(ne_len[used[0]])

    xyz = np.ascontiguousarray(centers.T)
    lens = _varint_len(xyz)  # 3 x n
    p = lens.sum(axis=0)
    nel = ne_len[vol]
    fl = 2 + (14 + p) + nel
    fl2 = fl >= 128
    rec_len = 1 + 1 + fl2 + fl
    slot = lens.max(axis=1)  # bytes per varint slot in this batch
    starts = _C_X + np.concatenate([[0], np.cumsum(slot)[:2]])
    c_name = int(_C_X + slot.sum())
    width = c_name + ne_max + 4

    template = np.zeros(width, dtype=np.uint8)
    template[_C_DATA] = 0x0A
    template[_C_CENTER_KEY] = 0x0A
    template[_C_CENTER_KEY + 2:_C_CENTER_KEY + 10] = np.frombuffer(_CENTER_KEY, dtype=np.uint8)
    template[[_C_FEATURE_TAG, _C_INT64_LIST_TAG, _C_PACKED_TAG]] = (0x12, 0x1A, 0x0A)
    single = len(used) == 1
    if single:
        e = entries[int(used[0])]
        template[c_name:c_name + len(e)] = np.frombuffer(e, dtype=np.uint8)
    rows = np.empty((n, width), dtype=np.uint8)
    rows[:] = template
    valid = np.empty((n, width), dtype=bool)
    valid[:] = True

    _field_view(rows, _C_LEN, "<u8")[:] = rec_len
    lencrc = _field_view(rows, _C_LENCRC, "<u4")
    for value in np.flatnonzero(np.bincount(rec_len)):
        lencrc[rec_len == value] = masked_crc(crc32c(int(value).to_bytes(8, "little")))
    rows[:, _C_FL] = np.where(fl2, (fl & 0x7F) | 0x80, fl)
    rows[:, _C_FL + 1] = fl >> 7
    valid[:, _C_FL + 1] = fl2
    rows[:, _C_CENTER_KEY + 1] = 14 + p
    rows[:, _C_FEATURE_LEN] = 4 + p
    rows[:, _C_INT64_LIST_LEN] = 2 + p
    rows[:, _C_PACKED_LEN] = p
    for axis in range(3):
        v = xyz[axis]
        ln = lens[axis]
        base = int(starts[axis])
        for k in range(int(slot[axis])):
            if k == 0:
                rows[:, base] = (v & 0x7F) | ((ln > 1).view(np.uint8) << 7)
            else:
                rows[:, base + k] = ((v >> (7 * k)) & 0x7F) | ((ln > k + 1).view(np.uint8) << 7)
                valid[:, base + k] = ln > k
    if not single:
        ent = np.zeros((len(entries), ne_max), dtype=np.uint8)
        for i in used:
            e = entries[int(i)][:ne_max]
            ent[i, : len(e)] = np.frombuffer(e, dtype=np.uint8)
        rows[:, c_name:c_name + ne_max] = ent[vol]

    # CRC32C of the data bytes: columns up to the name entry one by one (holes keep the
    # register), then the per-volume constant name entry as "shift + constant".
    # The bytes before the varints depend only on P (3..15) and the name entry's length, so
    # the register after them comes from a small table; only varint columns are processed.
    lengths = sorted({int(v) for v in ne_len[used]})
    table = _prefix_registers(tuple(lengths))
    if len(lengths) == 1:
        state = table[p, 0]
    else:
        state = table[p, np.searchsorted(np.array(lengths), nel)]
    holes = {int(b) + k for b, w in zip(starts, slot) for k in range(1, int(w))}
    for c in range(_C_X, c_name):
        col = rows[:, c]
        if c in holes:
            state = np.where(valid[:, c], _process(state, col), state)
        else:
            state = _process(state, col)
    regs = np.zeros(len(entries), dtype=np.uint32)
    for i in used:
        regs[i] = _register_after(entries[int(i)])
    crc = masked_crc(state ^ np.uint32(0xFFFFFFFF))
    if uniform_names:
        state = _shift(state, ne_max) ^ regs[vol]
        crc = masked_crc(state ^ np.uint32(0xFFFFFFFF))
        _field_view(rows, c_name + ne_max, "<u4")[:] = crc
    else:
        # The data CRC follows the name entry, whose length varies by volume.
        valid[:, c_name:] = False
        for length in np.flatnonzero(np.bincount(nel)):
            sel = nel == length
            st = _shift(state[sel], int(length)) ^ regs[vol[sel]]
            _field_view(rows, c_name + int(length), "<u4")[sel] = masked_crc(st ^ np.uint32(0xFFFFFFFF))
            valid[sel, c_name:c_name + int(length) + 4] = True
    return rows.reshape(-1)[valid.reshape(-1)].tobytes()


def serialize_example(center, name: bytes) -> bytes:
    """One serialized Example (no framing): for tests and small writers."""
    framed = serialize_batch(np.asarray([center]), np.zeros(1, dtype=np.int64), [name])
    return framed[12:-4]


class GzipRecordWriter:
    """Writes framed records into one GZIP stream (TFRecordOptions compression_type="GZIP").

    Compression runs in one background thread (zlib releases the GIL) while the caller
    serializes the next batch; at most two blocks are in flight, so memory stays bounded.
    """

    def __init__(self, path: str | Path, level: int = 1, block_bytes: int = 8 << 20):
        from concurrent.futures import ThreadPoolExecutor

        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._block = block_bytes
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._inflight = None
        self.records = 0

    def write_framed(self, data: bytes, count: int) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.records += count
        if self._pending_bytes >= self._block:
            self._flush_pending()

    def write(self, centers: np.ndarray, volume_ids: np.ndarray, names: list[bytes], batch: int = 1 << 16) -> None:
        for i in range(0, len(centers), batch):
            part = centers[i:i + batch]
            self.write_framed(serialize_batch(part, volume_ids[i:i + batch], names), len(part))

    def _compress(self, block: bytes) -> None:
        self._fh.write(self._z.compress(block))

    def _wait(self) -> None:
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None

    def _flush_pending(self) -> None:
        if self._pending:
            block = b"".join(self._pending)
            self._pending, self._pending_bytes = [], 0
            self._wait()
            self._inflight = self._pool.submit(self._compress, block)

    def close(self) -> None:
        try:
            self._flush_pending()
            self._wait()
            self._fh.write(self._z.flush())
            self._fh.flush()
        finally:
            self._pool.shutdown(wait=True)
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._fh.close()
