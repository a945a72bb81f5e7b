"""The state-bucket codec: many symbols' detection states in one Spark state value, losslessly; expiry."""

import struct

import numpy as np

from market_anomaly.core.state import pack, unpack_bucket
from market_anomaly.spark.workers import MAGIC, SymbolState, expire, pack_states, unpack_states


def test_round_trip_keeps_every_symbol_time_and_byte():
    states = {"BTCUSDT": SymbolState(1_769_285_820_000, bytes(range(256)) * 30), "ETHUSDT": SymbolState(0, b""),
              "1000SATSUSDT": SymbolState(-1, b"\x00\x01"), "ÉTHUSDT": SymbolState(5, b"x")}
    assert unpack_states(pack_states(states)) == states


def test_a_symbol_of_any_length_round_trips():
    # The stream only lets 20-character symbols through; the codec itself has no 16-bit limit left.
    states = {"A" * 70_000: SymbolState(1, b"state")}
    assert unpack_states(pack_states(states)) == states


def test_empty_bucket():
    assert pack_states({}) == MAGIC
    assert unpack_states(MAGIC) == {}


def test_a_bucket_written_before_the_last_open_time_was_kept_reads_it_from_the_state():
    blob = pack({"engine.last": np.array([1_769_285_820_000.0, 1.5, 2.0, 10.0])})
    legacy = struct.pack("<HI", 7, len(blob)) + b"BTCUSDT" + blob
    assert unpack_states(legacy) == {"BTCUSDT": SymbolState(1_769_285_820_000, blob)}


def test_symbols_unseen_for_the_expiry_are_dropped():
    states = {"OLD": SymbolState(1_000, b"a"), "EDGE": SymbolState(5_000, b"b"), "NEW": SymbolState(9_000, b"c")}
    assert expire(states, now=10_000, expiry_ms=5_000) == ["OLD"]
    assert list(states) == ["EDGE", "NEW"]


def test_a_bucket_mixing_states_from_before_and_after_a_detector_was_added_reads_each_symbol_its_own_row():
    # After an upgrade, a bucket holds states written with 2 detectors' counts (symbols without candles since) beside
    # states rewritten with 3: the new layout is read, the old one starts over from the default.
    old, new = pack({"own": np.array([1.0, 2.0])}), pack({"own": np.array([7.0, 8.0, 9.0])})
    rows = unpack_bucket([old, new, None, new]).rows("own", [0.0, 0.0, 0.0])
    assert rows.tolist() == [[0.0, 0.0, 0.0], [7.0, 8.0, 9.0], [0.0, 0.0, 0.0], [7.0, 8.0, 9.0]]
