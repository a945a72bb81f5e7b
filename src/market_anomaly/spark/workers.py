"""Per-process caches of model parameters and detection engines; the state-bucket codec.

Spark reuses Python worker processes across micro-batches; keeping one engine per
worker (rebuilt only when ``model_params.json`` changes) keeps the per-batch cost low
and makes a live edit of the file take effect in the next micro-batch.
"""

from __future__ import annotations

import struct
import warnings

from market_anomaly.core import DetectionEngine, ParamsWatcher

# PySpark concatenates the step's output frames; the rejects' all-null columns make pandas warn
# about a future dtype rule on every micro-batch, which would drown the live table.
warnings.filterwarnings("ignore", message="The behavior of DataFrame concatenation with empty or all-NA entries",
                        category=FutureWarning)

_watchers: dict[str, ParamsWatcher] = {}
_engines: dict[str, tuple[object, DetectionEngine]] = {}


def params_for(path: str):
    watcher = _watchers.get(path)
    if watcher is None:
        watcher = _watchers[path] = ParamsWatcher(path)
    return watcher.current()


def engine_for(path: str) -> DetectionEngine:
    params = params_for(path)
    cached = _engines.get(path)
    if cached is None or cached[0] is not params:
        cached = _engines[path] = (params, DetectionEngine(params))
    return cached[1]


_ENTRY = struct.Struct("<HI")  # symbol length, state length


def pack_states(states: dict[str, bytes]) -> bytes:
    """Several symbols' detection states as one state-store value: (lengths, symbol, state) repeated."""
    parts = []
    for symbol, blob in states.items():
        name = symbol.encode()
        parts += [_ENTRY.pack(len(name), len(blob)), name, blob]
    return b"".join(parts)


def unpack_states(data: bytes) -> dict[str, bytes]:
    states, offset = {}, 0
    while offset < len(data):
        name_length, blob_length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        symbol = data[offset:offset + name_length].decode()
        offset += name_length
        states[symbol] = bytes(data[offset:offset + blob_length])
        offset += blob_length
    return states
