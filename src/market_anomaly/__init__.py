"""Real-time anomaly detection for crypto market candles."""

__version__ = "0.1.0"
