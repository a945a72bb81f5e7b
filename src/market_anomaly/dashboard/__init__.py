"""The local dashboard: candlestick chart with anomaly markers, anomaly table, pipeline health."""
