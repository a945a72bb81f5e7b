"""The console table: fixed-width lines, periodic header, colour only on a terminal; at 2,000 symbols the
anomalies and one summary line per batch."""

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


def test_all_prints_every_decision_in_time_order_with_a_periodic_header():
    out = io.StringIO()
    sink = ConsoleSink("all", out, header_every=2)
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


def market_minute(symbols: int, anomalies: dict[int, str], minute: int = 0) -> pd.DataFrame:
    """One minute of ``symbols`` symbols closing together; ``anomalies``: symbol index -> confidence."""
    return pd.DataFrame([
        {**record(f"S{index:04d}USDT", anomaly=index in anomalies, confidence=anomalies.get(index, "NONE"),
                  reasons="VOLUME 9x" if index in anomalies else "", minute=minute),
         "decided_at": OPEN_TIME + (minute + 1) * 60_000 + 2_500}
        for index in range(symbols)])


def test_auto_at_2000_symbols_prints_the_anomalies_and_one_summary_line():
    out = io.StringIO()
    ConsoleSink("auto", out).write(market_minute(2000, {7: "HIGH", 1500: "MEDIUM", 1999: "MEDIUM"}))
    assert out.getvalue().splitlines() == [
        header_line(),
        "! 20:17 | S0007USDT  |    91,702.10 |   +2.61 |   3   | YES        | HIGH       | VOLUME 9x",
        "! 20:17 | S1500USDT  |    91,702.10 |   +2.61 |   3   | YES        | MEDIUM     | VOLUME 9x",
        "! 20:17 | S1999USDT  |    91,702.10 |   +2.61 |   3   | YES        | MEDIUM     | VOLUME 9x",
        "# 2026-01-24 20:17 UTC: 2,000 candles of 2,000 symbols, 3 anomalies (HIGH 1, MEDIUM 2); "
        "decided 20:18:02 UTC",
    ]


def test_auto_prints_every_decision_of_a_small_watch_list():
    out = io.StringIO()
    sink = ConsoleSink("auto", out, header_every=100)
    sink.write(market_minute(50, {3: "LOW"}))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 + 50 and lines[0] == header_line() and lines[4].startswith("! 20:17 | S0003USDT")
    assert not any(line.startswith("#") for line in lines)
    sink.write(market_minute(51, {}, minute=1))  # one symbol more: the summary alone (no anomaly)
    assert out.getvalue().splitlines()[51:] == [
        "# 2026-01-24 20:18 UTC: 51 candles of 51 symbols, 0 anomalies; decided 20:19:02 UTC"]


def test_auto_summarises_a_catch_up_batch_of_few_symbols():
    history = [record(symbol, anomaly=False, confidence="NONE", reasons="", minute=minute)
               for minute in range(150) for symbol in ("BTCUSDT", "ETHUSDT")]
    history[101] = record("ETHUSDT", anomaly=True, confidence="LOW", minute=50)
    out = io.StringIO()
    ConsoleSink("auto", out).write(pd.DataFrame(history))
    lines = out.getvalue().splitlines()
    assert [line[:23] for line in lines[1:2]] == ["! 21:07 | ETHUSDT    | "]
    assert lines[2] == "# 2026-01-24 20:17 to 22:46 UTC: 300 candles of 2 symbols, 1 anomaly (LOW 1)"
    assert len(lines) == 3


def test_summary_mode_prints_one_line_per_batch_and_a_batch_across_days_names_both():
    out = io.StringIO()
    sink = ConsoleSink("summary", out)
    sink.write(market_minute(3, {0: "HIGH"}))
    sink.write(pd.DataFrame([record(minute=0), record(anomaly=False, minute=24 * 60)]))
    sink.write(pd.DataFrame(columns=["symbol", "open_time"]))  # an empty batch: nothing
    assert out.getvalue().splitlines() == [
        "# 2026-01-24 20:17 UTC: 3 candles of 3 symbols, 1 anomaly (HIGH 1); decided 20:18:02 UTC",
        "# 2026-01-24 20:17 to 2026-01-25 20:17 UTC: 2 candles of 1 symbol, 1 anomaly (HIGH 1)",
    ]


def test_the_all_mode_prints_a_catch_up_batch_in_full():
    out = io.StringIO()
    ConsoleSink("all", out).write(pd.DataFrame([record(f"S{i}", minute=m) for m in range(100) for i in range(60)]))
    assert len(out.getvalue().splitlines()) == 6000 + 6000 // 40


def test_control_characters_from_the_data_never_reach_the_terminal():
    line = decision_line({"symbol": "EVIL\x1b[2J", "open_time": 0, "close": 1.0, "is_anomaly": True,
                          "confidence": "HIGH", "reasons": "Z-SCORE 9σ\r\x1b]0;owned\x07 \u202egnp.exe"})
    assert "\x1b" not in line and "\r" not in line and "\u202e" not in line
    assert "EVIL\\x1b[2J" in line and "\\x1b]0;owned\\x07" in line
