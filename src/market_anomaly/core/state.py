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

from market_anomaly.core.features import Segments, Tails

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
    names, sizes, offset = _layout(blob)
    data = np.frombuffer(blob, dtype="<f8", offset=offset)
    starts = np.cumsum([0, *sizes])
    return {name: data[start:end].astype(float) for name, start, end in zip(names, starts, starts[1:])}


def _layout(blob: bytes) -> tuple[tuple[str, ...], tuple[int, ...], int]:
    """(names, sizes, where the data starts) of a ``pack`` blob; ``ValueError`` unless the blob is one, complete."""
    if not blob.startswith(MAGIC):
        raise ValueError("not a detection state (bad magic)")
    (count,), offset = struct.unpack_from("<H", blob, len(MAGIC)), len(MAGIC) + 2
    names, sizes = [], []
    for _ in range(count):
        (length,) = struct.unpack_from("<B", blob, offset)
        names.append(blob[offset + 1:offset + 1 + length].decode())
        (size,) = struct.unpack_from("<I", blob, offset + 1 + length)
        sizes.append(size)
        offset += 1 + length + 4
    if len(blob) - offset != 8 * sum(sizes):
        raise ValueError("truncated detection state")
    return tuple(names), tuple(sizes), offset


class BucketState:
    """Several symbols' states by name, each name's arrays end to end (``Tails``): what a bucket's components read.

    The engine hands each component a view at its own prefix (``within``); a name missing
    from a symbol's state reads as an empty tail or the default scalar (a new symbol).
    ``unpack_bucket`` builds one from the symbols' ``pack`` blobs.

    >>> state = unpack_bucket([pack({"seen": np.array([3.0]), "tail": np.array([0.1, 0.2])}), None])
    >>> state.scalars("seen", 0).tolist(), state.tails("tail").values.tolist(), state.tails("tail").segments.counts.tolist()
    ([3.0, 0.0], [0.1, 0.2], [2, 0])
    """

    def __init__(self, columns: dict[str, Tails], symbols: int, prefix: str = ""):
        self.columns, self.symbols, self.prefix = columns, symbols, prefix

    def __len__(self) -> int:
        return self.symbols

    def within(self, prefix: str) -> "BucketState":
        return BucketState(self.columns, self.symbols, f"{self.prefix}{prefix}.")

    def tails(self, name: str) -> Tails:
        found = self.columns.get(self.prefix + name)
        return found if found is not None else Tails.empty(self.symbols)

    def scalars(self, name: str, default: float) -> np.ndarray:
        return self.rows(name, [default])[:, 0]

    def rows(self, name: str, default: list[float]) -> np.ndarray:
        """A fixed-size array per symbol, stacked: (symbols, len(default)); ``default`` where a symbol has none."""
        found = self.tails(name)
        rows = np.tile(np.asarray(default, dtype=float), (self.symbols, 1))
        has = found.segments.counts == len(default)  # another size: a state from before the layout changed
        rows[has] = found.values[np.repeat(has, found.segments.counts)].reshape(-1, len(default))
        return rows


def unpack_bucket(blobs: list[bytes | None]) -> BucketState:
    """Several symbols' ``pack`` blobs (None: a new symbol) as one ``BucketState``.

    Symbols whose states share a layout (names and sizes: every warm symbol's) are decoded
    together, so the cost per symbol is a byte comparison, not a parse.
    """
    layouts: list[tuple[bytes, tuple[str, ...], tuple[int, ...], list[int]]] = []  # header, names, sizes, symbols
    for index, blob in enumerate(blobs):
        if not blob:
            continue
        for header, names, sizes, members in layouts:
            if len(blob) == len(header) + 8 * sum(sizes) and blob.startswith(header):
                members.append(index)
                break
        else:
            names, sizes, offset = _layout(blob)
            layouts.append((blob[:offset], names, sizes, [index]))
    counts: dict[str, np.ndarray] = {}
    blocks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for header, names, sizes, members in layouts:
        data = np.frombuffer(b"".join(blobs[index][len(header):] for index in members), dtype="<f8").reshape(
            len(members), sum(sizes))
        members = np.array(members)
        for name, start, size in zip(names, np.cumsum([0, *sizes]), sizes):
            counts.setdefault(name, np.zeros(len(blobs), dtype=np.int64))[members] = size
            blocks.setdefault(name, []).append((members, data[:, start:start + size]))
    columns = {}
    for name, parts in blocks.items():
        segments = Segments(counts[name])
        values = np.empty(segments.ends[-1])
        for members, block in parts:
            values[segments.starts[members][:, None] + np.arange(block.shape[1])] = block
        columns[name] = Tails(values, segments)
    return BucketState(columns, len(blobs))


def pack_bucket(arrays: dict[str, object], which: np.ndarray) -> list[bytes]:
    """The ``pack`` blob of each symbol in ``which`` (indices), from a bucket's state by name: ``Tails``, or a
    fixed number of values per symbol (an array of shape (symbols,) or (symbols, k)).

    Symbols with the same sizes (every warm symbol) share one header and one ``tobytes``.

    >>> arrays = {"last": np.array([[1.0, 2.0], [3.0, 4.0]]), "tail": Tails.of([np.array([5.0]), np.array([])])}
    >>> pack_bucket(arrays, np.array([0, 1])) == [pack({"last": np.array([1.0, 2.0]), "tail": np.array([5.0])}),
    ...                                           pack({"last": np.array([3.0, 4.0]), "tail": np.array([])})]
    True
    """
    names, counts, starts, values = list(arrays), [], [], []
    for name in names:
        found = arrays[name]
        if isinstance(found, Tails):
            counts.append(found.segments.counts[which])
            starts.append(found.segments.starts[which])
            values.append(found.values)
        else:
            rows = np.asarray(found, dtype=float)
            rows = rows.reshape(len(rows), -1)
            counts.append(np.full(len(which), rows.shape[1]))
            starts.append(which * rows.shape[1])
            values.append(rows.ravel())
    sizes_by_symbol = np.column_stack(counts) if names else np.zeros((len(which), 0), dtype=np.int64)
    layouts, inverse = np.unique(sizes_by_symbol, axis=0, return_inverse=True)
    blobs: list[bytes] = [b""] * len(which)
    for number, sizes in enumerate(layouts):
        members = np.flatnonzero(inverse.ravel() == number)
        header = b"".join([MAGIC, struct.pack("<H", len(names)), *(
            struct.pack("<B", len(name.encode())) + name.encode() + struct.pack("<I", size)
            for name, size in zip(names, sizes))])
        matrix = np.hstack([np.empty((len(members), 0))] + [
            values[column][starts[column][members][:, None] + np.arange(size)]
            for column, size in enumerate(sizes)]).astype("<f8")
        raw, width = matrix.tobytes(), 8 * int(sizes.sum())
        for row, member in enumerate(members):
            blobs[member] = header + raw[row * width:(row + 1) * width]
    return blobs
