"""`market-anomaly decide`: the low-latency runner, a Kafka consumer-group member that decides each poll's candles
with the same core, checks and sinks as the Spark stream (``runner``), its state checkpointed per partition."""
