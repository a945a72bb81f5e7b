"""Candles: the record every part exchanges, and the files they come from."""
