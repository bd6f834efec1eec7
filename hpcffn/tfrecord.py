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


def _register_after(data: bytes) -> int:
    """CRC register after `data` starting from register 0 (no init, no final xor)."""
    state = 0
    for b in data:
        state = int(_T8[(state ^ b) & 0xFF]) ^ (state >> 8)
    return state


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
_C_CENTER_KEY = 15
_C_X = 31  # three five-byte varint slots: x, y, z
_C_NAME = 46
_CENTER_KEY = bytes([0x0A, 0x06]) + b"center"


def _varint_len(v: np.ndarray) -> np.ndarray:
    n = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 5):
        n += v >= (1 << (7 * k))
    return n


def serialize_batch(centers: np.ndarray, volume_ids: np.ndarray, names: list[bytes]) -> bytes:
    """Framed TFRecord bytes for records (centers[i] = x,y,z, names[volume_ids[i]]), in order.

    Built column-major (one contiguous column per byte slot) so the CRC runs over contiguous
    columns; the final boolean compaction reads it back record by record.
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

    xyz = np.ascontiguousarray(centers.T)
    lens = _varint_len(xyz)  # 3 x n
    p = lens.sum(axis=0)
    nel = ne_len[vol]
    fl = 2 + (14 + p) + nel
    fl2 = fl >= 128
    rec_len = 1 + 1 + fl2 + fl
    width = _C_NAME + ne_max + 4
    cols = np.zeros((width, n), dtype=np.uint8)
    valid = np.ones((width, n), dtype=bool)

    cols[_C_LEN:_C_LEN + 8] = rec_len.astype("<u8").view(np.uint8).reshape(n, 8).T
    for value in np.unique(rec_len):
        sel = rec_len == value
        hdr = int(value).to_bytes(8, "little")
        crc_hdr = np.frombuffer(masked_crc(crc32c(hdr)).to_bytes(4, "little"), dtype=np.uint8)
        for k in range(4):
            cols[_C_LENCRC + k, sel] = crc_hdr[k]
    cols[_C_DATA] = 0x0A
    cols[_C_FL] = np.where(fl2, (fl & 0x7F) | 0x80, fl)
    cols[_C_FL + 1] = fl >> 7
    valid[_C_FL + 1] = fl2
    cols[_C_CENTER_KEY] = 0x0A
    cols[_C_CENTER_KEY + 1] = 14 + p
    cols[_C_CENTER_KEY + 2:_C_CENTER_KEY + 10] = np.frombuffer(_CENTER_KEY, dtype=np.uint8)[:, None]
    cols[25] = 0x12
    cols[26] = 4 + p
    cols[27] = 0x1A
    cols[28] = 2 + p
    cols[29] = 0x0A
    cols[30] = p
    for axis in range(3):
        v = xyz[axis]
        ln = lens[axis]
        base = _C_X + 5 * axis
        for k in range(5):
            more = (ln > k + 1).view(np.uint8) << 7
            cols[base + k] = ((v >> (7 * k)) & 0x7F).astype(np.uint8) | more
            valid[base + k] = ln > k
    ent = np.zeros((ne_max, len(entries)), dtype=np.uint8)
    for i, e in enumerate(entries):
        ent[: len(e), i] = np.frombuffer(e, dtype=np.uint8)
    cols[_C_NAME:_C_NAME + ne_max] = ent[:, vol]
    valid[_C_NAME:] = False
    uniform_names = bool((ne_len == ne_max).all())
    if uniform_names:
        valid[_C_NAME:_C_NAME + ne_max] = True
    else:
        valid[_C_NAME:_C_NAME + ne_max] = np.arange(ne_max)[:, None] < nel[None, :]

    # CRC32C of the data bytes: columns up to the name entry one by one (holes keep the
    # register), then the per-volume constant name entry as "shift + constant".
    state = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    for c in range(_C_DATA, _C_NAME):
        col = cols[c]
        if c == _C_FL + 1 or (_C_X <= c < _C_NAME and (c - _C_X) % 5 != 0):
            state = np.where(valid[c], _process(state, col), state)
        else:
            state = _process(state, col)
    regs = np.array([_register_after(e) for e in entries], dtype=np.uint32)
    for length in np.unique(ne_len):
        if uniform_names:
            state = _shift(state, int(length)) ^ regs[vol]
        else:
            sel = nel == length
            state[sel] = _shift(state[sel], int(length)) ^ regs[vol[sel]]
    crc = masked_crc(state ^ np.uint32(0xFFFFFFFF))
    crc_bytes = crc.astype("<u4").view(np.uint8).reshape(n, 4).T
    # The data CRC follows the name entry, whose length varies by volume.
    if uniform_names:
        cols[_C_NAME + ne_max:] = crc_bytes
        valid[_C_NAME + ne_max:] = True
    else:
        r = np.arange(n)[None, :]
        where = _C_NAME + nel[None, :] + np.arange(4)[:, None]
        cols[where, r] = crc_bytes
        valid[where, r] = True
    rows = np.ascontiguousarray(cols.T)
    return rows[np.ascontiguousarray(valid.T)].tobytes()


def serialize_example(center, name: bytes) -> bytes:
    """One serialized Example (no framing): for tests and small writers."""
    framed = serialize_batch(np.asarray([center]), np.zeros(1, dtype=np.int64), [name])
    return framed[12:-4]


class GzipRecordWriter:
    """Writes framed records into one GZIP stream (TFRecordOptions compression_type="GZIP")."""

    def __init__(self, path: str | Path, level: int = 1, block_bytes: int = 8 << 20):
        self._fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._block = block_bytes
        self.records = 0

    def write_framed(self, data: bytes, count: int) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.records += count
        if self._pending_bytes >= self._block:
            self._flush_pending()

    def write(self, centers: np.ndarray, volume_ids: np.ndarray, names: list[bytes]) -> None:
        self.write_framed(serialize_batch(centers, volume_ids, names), len(centers))

    def _flush_pending(self) -> None:
        if self._pending:
            self._fh.write(self._z.compress(b"".join(self._pending)))
            self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        self._flush_pending()
        self._fh.write(self._z.flush())
        self._fh.flush()
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self._fh.close()
