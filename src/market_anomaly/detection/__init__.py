"""The detection core: pure Python/NumPy (no Spark), shared by the stream and offline commands."""
