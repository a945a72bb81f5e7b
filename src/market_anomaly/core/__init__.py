"""The detection core: pure Python/NumPy (no Spark), shared by the stream and offline commands.

``DetectionEngine(params).process(symbol, candles, state)`` turns one symbol's candles
into decisions (``DECISION_SCHEMA``), ``decide_bucket(candles, states)`` many symbols' in one
pass (the stream): the registered detectors (``detectors.DETECTORS``, on shared ``baselines``) scored on one calibrated scale
(``calibration``) and fused by ``consensus`` at a threshold ``training`` sets for a false-alarm
budget on history; ``ParamsWatcher`` follows ``model_params.json``;
``mark_market_events`` joins anomalies shared by many symbols into one market event.
"""

from market_anomaly.core.consensus import mark_market_events
from market_anomaly.core.engine import DECISION_SCHEMA, DetectionEngine
from market_anomaly.core.params import InvalidParams, ModelParams, ParamsWatcher, load_params

__all__ = ["DECISION_SCHEMA", "DetectionEngine", "InvalidParams", "ModelParams", "ParamsWatcher",
           "load_params", "mark_market_events"]
