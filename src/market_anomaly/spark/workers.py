"""Per-process caches of model parameters and detection engines.

Spark reuses Python worker processes across micro-batches; keeping one engine per
worker (rebuilt only when ``model_params.json`` changes) keeps the per-batch cost low
and makes a live edit of the file take effect in the next micro-batch.
"""

from __future__ import annotations

import warnings

from market_anomaly.detection import DetectionEngine, ParamsWatcher

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
