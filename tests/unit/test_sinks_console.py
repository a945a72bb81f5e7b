"""The console table: fixed-width lines, periodic header, colour only on a terminal."""

from __future__ import annotations

import io

import pandas as pd

from market_anomaly.sinks.console import ANSI_ANOMALY, ConsoleSink, decision_line, format_price, header_line

OPEN_TIME = 1_769_285_820_000  # 2026-01-24 20:17 UTC


def record(symbol="BTCUSDT", close=91_702.1, return_pct=2.61, votes=3, anomaly=True, confidence="HIGH",
           reasons="Z-SCORE 9.4σ | VOLATILITY 4.2σ | VOLUME 12x", minute=0):
    return {"symbol": symbol, "interval": "1m", "open_time": OPEN_TIME + minute * 60_000, "close": close,
            "return_pct": return_pct, "votes": votes, "is_anomaly": anomaly, "confidence": confidence,
            "reasons": reasons}


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_are_fixed_width_and_match_the_header():
    assert header_line() == ("  Time  | Symbol     | Close        | Return% | Votes | IS_ANOMALY | Confidence "
                             "| Reasons")
    assert decision_line(record()) == ("! 20:17 | BTCUSDT    |    91,702.10 |   +2.61 |   3   | YES        "
                                       "| HIGH       | Z-SCORE 9.4σ | VOLATILITY 4.2σ | VOLUME 12x")
    quiet = decision_line(record("ETHUSDT", 3_011.52, -0.02, 0, False, "NONE", "", minute=1))
    assert quiet == "  20:18 | ETHUSDT    |     3,011.52 |   -0.02 |   0   | no         | NONE       |"
    assert quiet.index("|") == header_line().index("|")


def test_warm_up_values_and_small_prices():
    line = decision_line(record("DOGEUSDT", 0.0812341, None, None, False, "NONE", ""))
    assert "|     0.081234 |       - |   -   | no " in line
    assert format_price(3.14159) == "3.1416"


def test_table_prints_every_decision_in_time_order_with_a_periodic_header():
    out = io.StringIO()
    sink = ConsoleSink("table", out, header_every=2)
    sink.write(pd.DataFrame([record(minute=1), record("ETHUSDT", anomaly=False, minute=0),
                             record("SOLUSDT", anomaly=False, minute=1)]))
    lines = out.getvalue().splitlines()
    assert [line.split("|")[1].strip() if not line.startswith("  Time") else "header" for line in lines] == [
        "header", "ETHUSDT", "BTCUSDT", "header", "SOLUSDT"]
    assert "\x1b[" not in out.getvalue()  # not a terminal: no colour codes in logs


def test_anomalies_mode_and_colour_on_a_terminal():
    out = Terminal()
    sink = ConsoleSink("anomalies", out)
    sink.write(pd.DataFrame([record(), record("ETHUSDT", anomaly=False)]))
    sink.write(pd.DataFrame([record("SOLUSDT", anomaly=False)]))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith(ANSI_ANOMALY + "! 20:17 | BTCUSDT")
    assert lines[1].endswith("\x1b[0m")


def test_a_catch_up_batch_shows_its_anomalies_and_the_latest_candle_per_symbol():
    history = [record(symbol, anomaly=False, confidence="NONE", reasons="", minute=minute)
               for minute in range(150) for symbol in ("BTCUSDT", "ETHUSDT")]
    history[101] = record("ETHUSDT", anomaly=True, minute=50)
    out = io.StringIO()
    ConsoleSink("table", out, catch_up_after=200).write(pd.DataFrame(history))
    lines = out.getvalue().splitlines()
    assert lines[0] == ("  ... catching up: 300 candles of 2 symbols, 2026-01-24 20:17 to 22:46 UTC; "
                        "showing its 1 anomalies and the latest candle per symbol")
    assert lines[1] == header_line()
    assert [line[:23] for line in lines[2:]] == ["! 21:07 | ETHUSDT    | ", "  22:46 | BTCUSDT    | ",
                                                 "  22:46 | ETHUSDT    | "]


def test_a_live_sized_batch_is_printed_in_full():
    out = io.StringIO()
    ConsoleSink("table", out, catch_up_after=200).write(pd.DataFrame([record(minute=m) for m in range(8)]))
    assert len(out.getvalue().splitlines()) == 1 + 8


def test_control_characters_from_the_data_never_reach_the_terminal():
    line = decision_line({"symbol": "EVIL\x1b[2J", "open_time": 0, "close": 1.0, "is_anomaly": True,
                          "confidence": "HIGH", "reasons": "Z-SCORE 9σ\r\x1b]0;owned\x07 \u202egnp.exe"})
    assert "\x1b" not in line and "\r" not in line and "\u202e" not in line
    assert "EVIL\\x1b[2J" in line and "\\x1b]0;owned\\x07" in line
