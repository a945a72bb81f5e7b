"""The state-bucket codec: many symbols' detection states in one Spark state value, losslessly."""

from market_anomaly.spark.workers import pack_states, unpack_states


def test_round_trip_keeps_every_symbol_and_byte():
    states = {"BTCUSDT": bytes(range(256)) * 30, "ETHUSDT": b"", "1000SATSUSDT": b"\x00\x01", "ÉTHUSDT": b"x"}
    assert unpack_states(pack_states(states)) == states


def test_empty_bucket():
    assert pack_states({}) == b""
    assert unpack_states(b"") == {}
