"""Training curves from the TensorBoard event files that train writes, read without TensorFlow.

An event file is a TFRecord stream: uint64 length, masked CRC32C of the length, one `Event`
protobuf, masked CRC32C of the data. tensorboard's compiled protos parse the events; the
framing is read here, so no TensorFlow import (seconds, and C++ log noise) is needed.
A record cut short (a job still writing) ends that file.
"""

from __future__ import annotations

import struct
from pathlib import Path

from hpcffn.io.tfrecord import crc32c, masked_crc

TAGS = ("loss", "precision", "recall", "f1", "examples_per_second")


def read_records(path: Path):
    """The payload bytes of every complete record of a TFRecord file (uncompressed)."""
    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        head = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", head)
        (head_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        end = pos + 12 + length + 4
        if head_crc != masked_crc(crc32c(head)) or end > len(data):
            return
        yield data[pos + 12:pos + 12 + length]
        pos = end


def read_scalars(train_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] sorted by step, over every event file of a train dir.

    A requeued or resumed job writes a new event file and may repeat steps after its last
    checkpoint; the value written last (by wall time) counts.
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    latest: dict[str, dict[int, tuple[float, float]]] = {}
    for path in sorted(Path(train_dir).glob("events.out.tfevents.*")):
        for record in read_records(path):
            event = event_pb2.Event.FromString(record)
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.HasField("tensor"):
                    number = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                seen = latest.setdefault(value.tag, {})
                if event.step not in seen or seen[event.step][0] <= event.wall_time:
                    seen[event.step] = (event.wall_time, number)
    return {tag: [(step, v) for step, (_, v) in sorted(points.items())] for tag, points in latest.items()}
