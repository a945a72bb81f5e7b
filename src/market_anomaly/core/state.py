"""Per-symbol detector state as compact bytes: named float64 arrays, no pickle; several symbols' states read together.

Layout: ``MAGIC``, then per array a 1-byte name length, the UTF-8 name, a 4-byte element
count (little-endian), then all arrays' float64 data in the same order. Integers (counts,
epoch milliseconds) are exact in float64 up to 2**53.

>>> blob = pack({"seen": np.array([3.0]), "tail": np.array([0.1, 0.2])})
>>> {name: values.tolist() for name, values in unpack(blob).items()}
{'seen': [3.0], 'tail': [0.1, 0.2]}
"""

from __future__ import annotations

import struct

import numpy as np

from market_anomaly.core.features import Tails

MAGIC = b"MAS1"


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    header = [MAGIC, struct.pack("<H", len(arrays))]
    for name, values in arrays.items():
        encoded = name.encode()
        header.append(struct.pack("<B", len(encoded)) + encoded + struct.pack("<I", np.size(values)))
    data = np.concatenate([np.ravel(values).astype("<f8") for values in arrays.values()]) if arrays else np.empty(0)
    return b"".join(header) + data.tobytes()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of ``pack``; raises ``ValueError`` on anything else."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a detection state (bad magic)")
    (count,), offset = struct.unpack_from("<H", blob, len(MAGIC)), len(MAGIC) + 2
    layout = []
    for _ in range(count):
        (length,) = struct.unpack_from("<B", blob, offset)
        name = blob[offset + 1:offset + 1 + length].decode()
        (size,) = struct.unpack_from("<I", blob, offset + 1 + length)
        layout.append((name, size))
        offset += 1 + length + 4
    data = np.frombuffer(blob, dtype="<f8", offset=offset)
    if len(data) != sum(size for _, size in layout):
        raise ValueError("truncated detection state")
    arrays, start = {}, 0
    for name, size in layout:
        arrays[name] = data[start:start + size].astype(float)
        start += size
    return arrays


class BucketState:
    """The unpacked states of several symbols (``unpack`` of each, ``{}`` for a new symbol), read by name.

    The engine hands each component a view at its own prefix (``within``); a name missing
    from a symbol's state reads as an empty tail or the default scalar (a new symbol).

    >>> state = BucketState([{"seen": np.array([3.0]), "tail": np.array([0.1, 0.2])}, {}])
    >>> state.scalars("seen", 0).tolist(), [part.tolist() for part in state.tails("tail").split()]
    ([3.0, 0.0], [[0.1, 0.2], []])
    """

    def __init__(self, memories: list[dict[str, np.ndarray]], prefix: str = ""):
        self.memories, self.prefix = memories, prefix

    def __len__(self) -> int:
        return len(self.memories)

    def within(self, prefix: str) -> "BucketState":
        return BucketState(self.memories, f"{self.prefix}{prefix}.")

    def tails(self, name: str) -> Tails:
        key = self.prefix + name
        return Tails.of([memory.get(key, _EMPTY) for memory in self.memories])

    def scalars(self, name: str, default: float) -> np.ndarray:
        key = self.prefix + name
        return np.array([memory[key][0] if key in memory else default for memory in self.memories])

    def rows(self, name: str, default: list[float]) -> np.ndarray:
        """A fixed-size array per symbol, stacked: (symbols, len(default))."""
        key = self.prefix + name
        return np.array([memory.get(key, default) for memory in self.memories], dtype=float).reshape(
            len(self.memories), len(default))


_EMPTY = np.empty(0)


def symbol_states(arrays: dict[str, object], symbols: int) -> list[dict[str, np.ndarray]]:
    """A bucket's state by name (``Tails``, or one value per symbol) -> one dict of arrays per symbol, for ``pack``."""
    memories: list[dict[str, np.ndarray]] = [{} for _ in range(symbols)]
    for name, values in arrays.items():
        parts = values.split() if isinstance(values, Tails) else np.asarray(values, dtype=float).reshape(symbols, -1)
        for memory, part in zip(memories, parts):
            memory[name] = part
    return memories
