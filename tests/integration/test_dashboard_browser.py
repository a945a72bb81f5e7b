"""The dashboard page in headless Debian Chromium (Playwright drives the system browser).

Loads the page served from a database with anomalies, waits for the Lightweight Charts chart
(candles, volume pane, anomaly markers), hovers an anomaly's candle for its reasons, checks the
anomaly table and the health panel, and saves a screenshot to artifacts/dashboard.png. A second
test writes new decisions while the page is open: they arrive over server-sent events, with no
reload and no polling.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def page(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
        assert errors == [], f"JavaScript errors on the page: {errors}"


def hover_candle(page, open_time: int) -> str:
    """Move the mouse onto the candle of ``open_time`` (where the chart draws it) and return the legend's text."""
    x, y = page.evaluate("""t => {
        const {chart, candleSeries} = window.dashboard;
        const bar = candleSeries.data().find(b => b.time === t);
        return [chart.timeScale().timeToCoordinate(t), candleSeries.priceToCoordinate((bar.high + bar.low) / 2)];
    }""", open_time // 1000)
    box = page.locator("#chart").bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    return page.locator("#legend").inner_text()


def test_chart_markers_table_and_health(page, dashboard_url, artifacts_dir, market_frame):
    page.goto(dashboard_url + "/#BTCUSDT")
    page.wait_for_selector("#chart[data-candles='30'][data-markers='2']", timeout=15_000)
    assert page.locator("#chart canvas").count() >= 2  # Lightweight Charts: the price pane and the volume pane
    assert page.evaluate("window.dashboard.chart.panes().length") == 2
    assert page.evaluate("window.dashboard.markers.markers().length") == 2
    markers = page.locator("[data-anomaly-marker='BTCUSDT']")
    assert sorted(markers.evaluate_all("ms => ms.map(m => m.dataset.confidence + ': ' + m.dataset.reasons)")) == [
        "HIGH: Z-SCORE 7.2σ | VOLUME 14x", "MEDIUM: VOLATILITY 4.1σ"]
    high = page.locator(".anomaly-marker[data-confidence='HIGH']")
    assert high.get_attribute("title") == "HIGH: Z-SCORE 7.2σ | VOLUME 14x"

    # The crosshair on the anomalous candle shows its reasons; on an ordinary one, none.
    btc = market_frame[market_frame.symbol == "BTCUSDT"]
    anomaly_time = int(btc[btc.confidence == "HIGH"].open_time.iat[0])
    assert "ANOMALY (HIGH): Z-SCORE 7.2σ | VOLUME 14x" in hover_candle(page, anomaly_time)
    assert "ANOMALY" not in hover_candle(page, anomaly_time - 5 * 60_000)

    # Zoom (mouse wheel) narrows the visible range; pan (drag) moves it.
    visible = "(() => { const r = window.dashboard.chart.timeScale().getVisibleLogicalRange(); return [r.from, r.to]; })()"
    before = page.evaluate(visible)
    page.mouse.wheel(0, -600)
    page.wait_for_function(f"{visible}[1] - {visible}[0] < {before[1] - before[0] - 1}")
    zoomed = page.evaluate(visible)
    box = page.locator("#chart").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 100)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 200, box["y"] + 100, steps=10)
    page.mouse.up()
    assert page.evaluate(visible)[0] < zoomed[0]  # dragged to the right: earlier candles come into view

    rows = page.locator("#anomalies tr")
    assert rows.count() == 3
    assert rows.first.inner_text().split("\t")[1] == "BTCUSDT"

    # Health: lag per partition from the job's offsets and the broker, last candle per symbol.
    page.wait_for_function("document.querySelectorAll('#lag tr td.num').length >= 12", timeout=20_000)
    assert page.locator("#lag tr").count() == 4
    assert page.locator("#lag tr td:last-child").all_inner_texts() == ["3", "3", "3", "3"]
    assert page.locator("#last-candles tr").count() == 2
    assert page.locator("#symbol-counts").inner_text().startswith("2: 2 fresh, 0 stale")
    assert page.locator("#last-batch").inner_text().startswith("#42: 60 rows")

    # Filters: minimum confidence HIGH leaves one row; the chart follows a click on ETHUSDT's row.
    page.select_option("#filters select[name=confidence]", "HIGH")
    page.wait_for_function("document.querySelectorAll('#anomalies tr').length === 1")
    page.select_option("#filters select[name=confidence]", "")
    page.wait_for_function("document.querySelectorAll('#anomalies tr').length === 3")
    page.locator("#anomalies tr[data-symbol='ETHUSDT']").click()
    page.wait_for_function("document.querySelectorAll('.anomaly-marker').length === 1")
    assert page.locator(".anomaly-marker").get_attribute("data-confidence") == "LOW"
    page.select_option("#symbol", "BTCUSDT")
    page.wait_for_function("document.querySelectorAll('.anomaly-marker').length === 2")

    # The picker is searched on the server (/api/symbols?q=): it lists the matches and shows the first.
    page.fill("#symbol-search", "eth")
    page.wait_for_function("[...document.querySelectorAll('#symbol option')].map(o => o.value).join() === 'ETHUSDT'")
    page.wait_for_function("document.querySelectorAll('.anomaly-marker').length === 1")
    assert page.locator("#symbol").input_value() == "ETHUSDT" and page.evaluate("location.hash") == "#ETHUSDT"
    page.fill("#symbol-search", "")
    page.wait_for_function("document.querySelectorAll('#symbol option').length === 2")
    page.select_option("#symbol", "BTCUSDT")
    page.wait_for_function("document.querySelectorAll('.anomaly-marker').length === 2")

    page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
    assert (artifacts_dir / "dashboard.png").stat().st_size > 10_000


def test_new_decisions_arrive_live_over_server_sent_events(page, live_dashboard, make_decision, artifacts_dir):
    from market_anomaly.sinks.database import DatabaseSink, open_database

    base, db_url = live_dashboard
    page.goto(base + "/#BTCUSDT")
    page.wait_for_selector("#chart[data-candles='30'][data-markers='2']", timeout=15_000)
    page.wait_for_selector("#status:text('live')", timeout=10_000)
    page.evaluate("window.fetchesAfterLoad = 0; const f = window.fetch; "
                  "window.fetch = (...a) => { if (String(a[0]).startsWith('/api/candles')) window.fetchesAfterLoad++; "
                  "return f(...a); }")

    # The job decides two more minutes, one of them an anomaly, and records its progress.
    sink = DatabaseSink(open_database(db_url))
    sink.write(pd.DataFrame([make_decision("BTCUSDT", 30, 90_400.0),
                             make_decision("BTCUSDT", 31, 91_900.0, True, "HIGH", "FLASH 9.9σ")]))
    sink.record_health({"batch_id": 2, "input_rows": 2, "at": int(time.time() * 1000)})
    sink.close()

    page.wait_for_selector("#chart[data-candles='32'][data-markers='3']", timeout=10_000)
    assert page.locator("[data-anomaly-marker='BTCUSDT'][data-reasons='FLASH 9.9σ']").count() == 1
    assert page.evaluate("window.dashboard.candleSeries.data().at(-1).close") == 91_900.0
    assert page.evaluate("window.fetchesAfterLoad") == 0  # pushed by the stream, not fetched again
    page.wait_for_function("document.querySelectorAll('#anomalies tr').length === 4")  # the progress event
    assert "FLASH 9.9σ" in page.locator("#anomalies tr").first.inner_text()
    page.screenshot(path=str(artifacts_dir / "dashboard-live.png"), full_page=True)
