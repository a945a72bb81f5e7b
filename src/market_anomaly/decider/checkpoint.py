"""A decider's checkpoint: per Kafka partition, the detection states of its symbols and the offset they cover.

One file per partition (``<topic>-<partition>.state``), replaced atomically: ``MAGIC``, the next offset to
read, then the states as ``spark.workers.pack_states`` writes them (the Spark stream's state-store value).
The offset is committed to the consumer group only after its file is written, so the group's offsets
(what lag tools read) are never ahead of a state, and a member that takes the partition over resumes
from the file: at most the last checkpoint interval is read again, which the engine ignores (candles
not after a symbol's last are dropped) and the idempotent sinks do not duplicate.

>>> import tempfile
>>> from market_anomaly.spark.workers import SymbolState
>>> directory = Path(tempfile.mkdtemp())
>>> save(directory, "candles", 3, 1234, {"BTCUSDT": SymbolState(1_700_000_040_000, b"state")})  # bytes of state
32
>>> load(directory, "candles", 3)
(1234, {'BTCUSDT': SymbolState(last_open_time=1700000040000, blob=b'state')})
>>> load(directory, "candles", 4) is None
True
"""

from __future__ import annotations

import struct
from pathlib import Path

from market_anomaly.files import write_atomically
from market_anomaly.spark.workers import SymbolState, pack_states, unpack_states

MAGIC = b"MAD1"
_OFFSET = struct.Struct("<q")


def path_of(directory: Path, topic: str, partition: int) -> Path:
    return Path(directory) / f"{topic}-{partition}.state"


def save(directory: Path, topic: str, partition: int, offset: int, states: dict[str, SymbolState]) -> int:
    """Write the partition's states and the next offset to read; returns the states' size in bytes."""
    path = path_of(directory, topic, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    packed = pack_states(states)
    write_atomically(path, lambda file: file.write(MAGIC + _OFFSET.pack(offset) + packed), durable=True)
    return len(packed)


def load(directory: Path, topic: str, partition: int) -> tuple[int, dict[str, SymbolState]] | None:
    """(next offset, states) of the partition's file, or None when it has none; ValueError for a file that is not
    a decider's checkpoint."""
    path = path_of(directory, topic, partition)
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _OFFSET.size:
        raise ValueError(f"{path} is not a decider checkpoint")
    (offset,) = _OFFSET.unpack_from(data, len(MAGIC))
    return offset, unpack_states(data[len(MAGIC) + _OFFSET.size:])
