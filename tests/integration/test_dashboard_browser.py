"""The dashboard page in headless Debian Chromium (Playwright drives the system browser).

Loads the page served from a database with anomalies, waits for the candlestick chart
and its anomaly markers, checks the hover text, the anomaly table and the health panel,
and saves a screenshot to artifacts/dashboard.png.
"""

from __future__ import annotations

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


def test_chart_markers_table_and_health(page, dashboard_url, artifacts_dir):
    page.goto(dashboard_url + "/#BTCUSDT")
    page.wait_for_selector("#chart[data-candles='30']", timeout=15_000)
    markers = page.locator("[data-anomaly-marker='BTCUSDT']")
    markers.first.wait_for(timeout=15_000)
    assert markers.count() == 2
    assert sorted(markers.evaluate_all("ms => ms.map(m => m.dataset.confidence + ': ' + m.dataset.reasons)")) == [
        "HIGH: Z-SCORE 7.2σ | VOLUME 14x", "MEDIUM: VOLATILITY 4.1σ"]

    high = page.locator(".anomaly-marker[data-confidence='HIGH']")
    assert high.get_attribute("title") == "HIGH: Z-SCORE 7.2σ | VOLUME 14x"
    high.hover()
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    assert "ANOMALY (HIGH): Z-SCORE 7.2σ | VOLUME 14x" in tooltip.inner_text()

    rows = page.locator("#anomalies tr")
    assert rows.count() == 3
    assert rows.first.inner_text().split("\t")[1] == "BTCUSDT"

    # Health: lag per partition from the job's offsets and the broker, last candle per symbol.
    page.wait_for_function("document.querySelectorAll('#lag tr td.num').length >= 12", timeout=20_000)
    assert page.locator("#lag tr").count() == 4
    assert page.locator("#lag tr td:last-child").all_inner_texts() == ["3", "3", "3", "3"]
    assert page.locator("#last-candles tr").count() == 2
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

    page.screenshot(path=str(artifacts_dir / "dashboard.png"), full_page=True)
    assert (artifacts_dir / "dashboard.png").stat().st_size > 10_000
