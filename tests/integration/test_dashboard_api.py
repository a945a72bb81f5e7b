"""The dashboard's JSON API, served by `market-anomaly dashboard` from a populated SQLite database and a real broker."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from market_anomaly.kafka.broker import free_port

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000


def get(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def api(base: str, path: str) -> dict:
    return json.loads(get(base, path)[2])


def test_symbols_searched_and_limited(dashboard_url):
    assert api(dashboard_url, "/api/symbols") == {"symbols": ["BTCUSDT", "ETHUSDT"], "matches": 2}
    assert api(dashboard_url, "/api/symbols?q=eth") == {"symbols": ["ETHUSDT"], "matches": 1}
    assert api(dashboard_url, "/api/symbols?q=USDT&limit=1") == {"symbols": ["BTCUSDT"], "matches": 2}
    assert api(dashboard_url, "/api/symbols?q=DOGE") == {"symbols": [], "matches": 0}
    assert len(api(dashboard_url, "/api/symbols?limit=999999")["symbols"]) == 2  # capped at 5000, not refused


def test_anomalies_with_filters(dashboard_url, market_frame):
    start = int(market_frame["open_time"].min())
    everything = api(dashboard_url, "/api/anomalies")["anomalies"]
    assert [(a["symbol"], a["open_time"], a["confidence"]) for a in everything] == [
        ("BTCUSDT", start + 25 * MINUTE_MS, "MEDIUM"), ("ETHUSDT", start + 20 * MINUTE_MS, "LOW"),
        ("BTCUSDT", start + 12 * MINUTE_MS, "HIGH")]
    assert everything[2]["reasons"] == "Z-SCORE 7.2σ | VOLUME 14x" and everything[2]["close"] == 91_020.0
    assert [a["open_time"] for a in api(dashboard_url, "/api/anomalies?symbol=btcusdt&confidence=high")[
        "anomalies"]] == [start + 12 * MINUTE_MS]
    assert [a["symbol"] for a in api(dashboard_url, "/api/anomalies?reason=VOLUME%2014")["anomalies"]] == ["BTCUSDT"]
    # since/until as ISO 8601 (UTC) or epoch ms; the fixture starts at 2026-01-24 20:17 UTC.
    iso = api(dashboard_url, "/api/anomalies?since=2026-01-24T20:30&until=2026-01-24T20:40Z")["anomalies"]
    assert [a["symbol"] for a in iso] == ["ETHUSDT"]
    epoch = api(dashboard_url, f"/api/anomalies?since={start + 13 * MINUTE_MS}&limit=1")["anomalies"]
    assert [a["open_time"] for a in epoch] == [start + 25 * MINUTE_MS]


def test_bad_parameters_are_400(dashboard_url):
    for path in ("/api/anomalies?since=yesterday", "/api/anomalies?confidence=EXTREME",
                 "/api/anomalies?limit=many", "/api/candles", "/api/symbols?limit=all",
                 "/api/health?stale_after=soon", "/api/health?limit=x"):
        with pytest.raises(urllib.error.HTTPError) as error:
            get(dashboard_url, path)
        assert error.value.code == 400, path


def test_candles_end_at_the_symbols_latest_candle(dashboard_url, market_frame):
    start = int(market_frame["open_time"].min())
    data = api(dashboard_url, "/api/candles?symbol=BTCUSDT&minutes=10")
    assert data["until"] == start + 29 * MINUTE_MS
    candles = data["candles"]
    assert [c["open_time"] for c in candles] == [start + m * MINUTE_MS for m in range(20, 30)]
    anomaly = candles[5]
    assert anomaly["is_anomaly"] is True and anomaly["reasons"] == "VOLATILITY 4.1σ"
    assert anomaly["open"] == pytest.approx((90_000 + 250 + 900) * 0.999)
    assert anomaly["high"] == pytest.approx((90_000 + 250 + 900) * 1.002)
    assert len(api(dashboard_url, "/api/candles?symbol=btcusdt")["candles"]) == 30  # default 120 minutes
    assert api(dashboard_url, "/api/candles?symbol=NOPE")["candles"] == []
    earlier = api(dashboard_url, f"/api/candles?symbol=ETHUSDT&minutes=5&until={start + 9 * MINUTE_MS}")
    assert [c["open_time"] for c in earlier["candles"]] == [start + m * MINUTE_MS for m in range(5, 10)]


def test_health_reports_progress_lag_topic_counts_and_last_candles(dashboard_url, market_frame):
    deadline = time.monotonic() + 20
    while True:  # Kafka is polled in the background; the first poll may still be running
        health = api(dashboard_url, "/api/health")
        if health["kafka"]["lag"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health["progress"]["batch_id"] == 42 and health["progress"]["processed_rows_per_second"] == 250.0
    assert (health["decisions"], health["anomalies"]) == (60, 3)
    start = int(market_frame["open_time"].min())
    assert [(c["symbol"], c["open_time"], c["stale"]) for c in health["last_candles"]] == [
        ("BTCUSDT", start + 29 * MINUTE_MS, False), ("ETHUSDT", start + 29 * MINUTE_MS, False)]
    assert health["symbols"] == {"total": 2, "stale": 0, "fresh": 2, "newest_open_time": start + 29 * MINUTE_MS,
                                 "stale_after_ms": 180_000}
    limited = api(dashboard_url, "/api/health?limit=1&stale_after=60")
    assert len(limited["last_candles"]) == 1 and limited["symbols"]["stale_after_ms"] == 60_000
    kafka = health["kafka"]
    assert kafka["error"] is None and kafka["enabled"] is True
    assert kafka["candles_topic"] == "dashboard-candles"
    assert [row["partition"] for row in kafka["lag"]] == [f"dashboard-candles:{p}" for p in range(4)]
    assert all(row["lag"] == 3 and row["high"] - row["end_offset"] == 3 for row in kafka["lag"])
    assert set(kafka["topics"]) == {"dashboard-candles", "crypto-candles-dlq", "crypto-anomalies"}
    assert kafka["topics"]["dashboard-candles"]["messages"] == 12


def test_page_and_static_files_are_served_without_external_resources(dashboard_url):
    status, kind, body = get(dashboard_url, "/")
    assert status == 200 and kind.startswith("text/html")
    page = body.decode()
    assert '<div id="chart"' in page and "/static/app.js" in page
    for asset in ("/static/app.js", "/static/style.css"):
        status, _, content = get(dashboard_url, asset)
        assert status == 200 and b"http://" not in content and b"https://" not in content
    # Everything the page loads is local (the chart library is vendored); the only outside address is
    # the attribution link to TradingView that the library's licence asks for.
    loaded = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', page)
    assert loaded and all(url.startswith("/static/") for url in loaded), loaded
    assert re.findall(r"https?://[^\"]+", page) == ["https://www.tradingview.com/"]
    status, kind, library = get(dashboard_url, "/static/vendor/lightweight-charts.standalone.production.js")
    assert status == 200 and b"TradingView Lightweight Charts" in library[:300]
    assert get(dashboard_url, "/static/vendor/LICENSE")[0] == get(dashboard_url, "/static/vendor/NOTICE")[0] == 200


def test_bad_database_url_fails_at_startup(dashboard_command):
    result = subprocess.run([*dashboard_command, "--db", "mysql://x/y", "--port", str(free_port()), "--no-kafka"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "unsupported database URL" in result.stderr


def test_an_unreachable_broker_is_reported_without_delaying_responses(dashboard_command, tmp_path):
    port = free_port()
    process = subprocess.Popen([*dashboard_command, "--db", f"sqlite:///{tmp_path / 'empty.db'}", "--port", str(port),
                                "--bootstrap-servers", f"127.0.0.1:{free_port()}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                health = api(base, "/api/health")
            except OSError:  # not listening yet
                time.sleep(0.2)
                continue
            assert time.monotonic() - started < 1.0
            if health["kafka"]["error"]:
                break
            time.sleep(0.5)
        assert health is not None and "crypto-candles" in health["kafka"]["error"]
        assert (health["kafka"]["lag"], health["kafka"]["topics"], health["progress"]) == ([], {}, None)
        assert (health["decisions"], health["last_candles"]) == (0, [])
        assert health["symbols"] == {"total": 0, "stale": 0, "fresh": 0, "newest_open_time": None,
                                     "stale_after_ms": 180_000}
        assert api(base, "/api/symbols") == {"symbols": [], "matches": 0}
    finally:
        process.terminate()
        assert process.wait(10) == 0  # SIGTERM stops the server cleanly
