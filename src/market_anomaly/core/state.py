"""Per-symbol detector state as compact bytes: named float64 arrays, no pickle.

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
