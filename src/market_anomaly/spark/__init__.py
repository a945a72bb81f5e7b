"""The Spark Structured Streaming consumer (runs the pure detection core per symbol)."""
