"""The whole pipeline as a user runs it: `market-anomaly up` (the command behind `make demo`).

One run for the module: `up` starts its own Kafka broker, the exchange simulator with two
injected anomalies, the producer, the Spark job and the dashboard. The tests then check,
against the real database the job writes, that the injected candles are flagged with the
expected reasons and ordinary ones are not; that the stream decided exactly what the
offline core decides on the same candles; that the dashboard shows the anomalies in a real
browser; and that Ctrl-C stops everything, leaving no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from support import stop_process

from market_anomaly.kafka.broker import LocalBroker, free_port

pytestmark = pytest.mark.integration

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
INJECTIONS = {  # symbol -> (kind, live minute, reason the detectors must give)
    "BTCUSDT": ("price_spike", 30, "Z-SCORE"),
    "ETHUSDT": ("volume_burst", 36, "VOLUME"),
}
MINUTE_MS = 60_000
SETTLE_MINUTES = 10  # decisions this long after an injection must exist before the checks run


class Demo:
    def __init__(self, home: Path, process: subprocess.Popen, dashboard_port: int, metrics_port: int):
        self.home = home / "demo"
        self.process = process
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.metrics_urls = {"producer": f"http://127.0.0.1:{metrics_port}/metrics",
                             "detect": f"http://127.0.0.1:{metrics_port + 1}/metrics",
                             "dashboard": f"{self.dashboard_url}/metrics"}

    @property
    def database(self) -> Path:
        return self.home / "anomalies.db"

    def labels(self) -> dict[str, dict]:
        path = self.home / "injected-labels.json"
        if not path.exists():
            return {}
        return {label["symbol"]: label for label in json.loads(path.read_text())}

    def decisions(self) -> pd.DataFrame:
        if not self.database.exists():
            return pd.DataFrame()
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as connection:
            try:
                return pd.read_sql_query("SELECT * FROM decisions ORDER BY symbol, open_time", connection)
            except (pd.errors.DatabaseError, sqlite3.OperationalError):
                return pd.DataFrame()  # the job has not created its schema yet

    def output(self) -> str:
        """The end of what `up` printed: its own log and the Spark job's live table."""
        return (self.home.parent / "up.out").read_text(errors="replace")[-5000:]

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in (self.home / "logs").glob("*.log"))


def processes_of(home: Path) -> list[int]:
    """Pids whose environment points at this demo's home: `up` and every child it started."""
    marker = f"MARKET_ANOMALY_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone


def free_port_pair() -> int:
    """A free port whose successor is free too (`up --metrics-port` takes two)."""
    import socket

    while True:
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    dashboard_port, metrics_port = free_port(), free_port_pair()
    command = [
        sys.executable, "-m", "market_anomaly", "up", "--symbols", ",".join(SYMBOLS), "--speed", "120",
        "--inject-random", "0", "--dashboard-port", str(dashboard_port), "--metrics-port", str(metrics_port),
        *[flag for symbol, (kind, minute, _) in INJECTIONS.items() for flag in ("--inject", f"{kind}:{symbol}:{minute}")],
    ]
    # Output to a file, not a pipe: nobody reads a pipe while the tests run, and a full one would stall the job.
    output = open(home / "up.out", "wb")
    process = subprocess.Popen(command, env={**os.environ, "MARKET_ANOMALY_HOME": str(home)},
                               stdout=output, stderr=subprocess.STDOUT)
    running = Demo(home, process, dashboard_port, metrics_port)
    try:
        wait_for_decisions(running, timeout=240)
        yield running
    finally:
        stop_process(process, signal.SIGINT, force=lambda: kill_all(processes_of(home)))


def wait_for_decisions(demo: Demo, timeout: float) -> None:
    """Until every injection has SETTLE_MINUTES of decisions after it (or fail with the logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if demo.process.poll() is not None:
            pytest.fail(f"`up` exited with {demo.process.returncode}:\n{demo.output()}\n{demo.logs()}")
        labels, decisions = demo.labels(), demo.decisions()
        if len(labels) == len(INJECTIONS) and not decisions.empty:
            latest = decisions.groupby("symbol")["open_time"].max()
            if all(latest.get(symbol, 0) >= label["end_time"] + SETTLE_MINUTES * MINUTE_MS
                   for symbol, label in labels.items()):
                return
        time.sleep(2)
    pytest.fail(f"no decisions past the injected anomalies within {timeout:.0f}s\n{demo.output()}\n{demo.logs()}")


def test_injected_anomalies_are_flagged_with_their_reasons(demo):
    decisions = demo.decisions()
    for symbol, (kind, _, reason) in INJECTIONS.items():
        label = demo.labels()[symbol]
        assert label["kind"] == kind
        window = decisions[(decisions.symbol == symbol) & decisions.open_time.between(label["open_time"],
                                                                                     label["end_time"])]
        flagged = window[window.is_anomaly.astype(bool)]
        assert len(flagged), f"{kind} on {symbol} not flagged:\n{window.to_string()}"
        assert any(reason in reasons for reasons in flagged.reasons), flagged.reasons.tolist()
        assert set(flagged.confidence) <= {"LOW", "MEDIUM", "HIGH"}


def test_ordinary_candles_are_not_flagged(demo):
    decisions, labels = demo.decisions(), demo.labels()
    ordinary = decisions.copy()
    for symbol, label in labels.items():
        around = (ordinary.symbol == symbol) & ordinary.open_time.between(
            label["open_time"] - MINUTE_MS, label["end_time"] + SETTLE_MINUTES * MINUTE_MS)
        ordinary = ordinary[~around]
    assert len(ordinary) > 500, "too few decisions to judge false alarms"
    false_alarms = ordinary[ordinary.is_anomaly.astype(bool)]
    # The simulator's market has fat tails, so a rare flag is possible; a flood is a bug.
    assert len(false_alarms) <= 2, false_alarms[["symbol", "open_time", "reasons"]].to_string()
    assert (ordinary.confidence == "NONE").mean() > 0.99


def test_every_candle_is_decided_exactly_once(demo):
    decisions = demo.decisions()
    assert not decisions.duplicated(["symbol", "interval", "open_time"]).any()
    for symbol in SYMBOLS:
        times = decisions[decisions.symbol == symbol].open_time.to_numpy()
        assert len(times) >= 240, symbol
        # Seeded history and live candles join without a hole.
        assert set(pd.Series(times).diff().dropna()) == {MINUTE_MS}, symbol


def test_stream_decisions_equal_offline_decisions(demo):
    """Parity: the Spark job and the offline core give the same decisions for the same candles."""
    from market_anomaly import config
    from market_anomaly.core import DetectionEngine, ParamsWatcher
    from market_anomaly.kafka.topics import read_to_end

    broker = LocalBroker(demo.home / "kafka")  # the broker `up` started; its port is in its state dir
    records = [json.loads(message.value()) for message in read_to_end(broker.client_config(), config.CANDLES_TOPIC)]
    candles = pd.DataFrame(records)
    stream = demo.decisions().set_index(["symbol", "open_time"])
    engine = DetectionEngine(ParamsWatcher(str(config.model_params_path())).current())
    compared = 0
    for symbol, group in candles.groupby("symbol"):
        offline, _ = engine.process(symbol, group.sort_values("open_time"), None)
        offline = offline[offline.open_time.isin(stream.loc[symbol].index)]
        streamed = stream.loc[symbol].loc[offline.open_time]
        assert (offline.votes.to_numpy() == streamed.votes.to_numpy()).all(), symbol
        assert (offline.is_anomaly.to_numpy() == streamed.is_anomaly.astype(bool).to_numpy()).all(), symbol
        assert offline.zscore.fillna(0).to_numpy() == pytest.approx(streamed.zscore.fillna(0).to_numpy(), abs=1e-9)
        strip_market = lambda reasons: " | ".join(r for r in reasons.split(" | ") if not r.startswith("MARKET"))  # noqa: E731
        assert [strip_market(r) for r in offline.reasons] == [strip_market(r) for r in streamed.reasons.fillna("")]
        compared += len(offline)
    assert compared >= 3 * 240


def test_dashboard_shows_the_live_anomalies(demo, chromium_path, artifacts_dir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_path), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{demo.dashboard_url}/#BTCUSDT")
            page.wait_for_selector("#chart canvas", timeout=20_000)
            # The last 24 h of market time: at 120x the injections are hours old by now.
            page.select_option("#minutes", "1440")
            page.wait_for_selector("[data-anomaly-marker='BTCUSDT']", state="attached", timeout=30_000)
            assert any("Z-SCORE" in reasons for reasons in page.locator("[data-anomaly-marker]").evaluate_all(
                "ms => ms.map(m => m.dataset.reasons)"))
            page.screenshot(path=str(artifacts_dir / "dashboard-demo.png"), full_page=True)
            assert errors == [], errors
        finally:
            browser.close()


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """A /metrics page as {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def consumer_dead_letters(samples: dict[tuple[str, tuple], float]) -> float:
    return sum(value for (name, labels), value in samples.items()
               if name == "market_anomaly_dead_letters_total" and ("stage", "consumer") in labels)


def test_metrics_are_scraped_and_move(demo):
    """Prometheus endpoints of the producer, the job and the dashboard, during the run: the values that must move."""
    import urllib.request

    from confluent_kafka import Producer

    from market_anomaly import config

    urllib.request.urlopen(demo.dashboard_url + "/api/health", timeout=10).read()
    broker = LocalBroker(demo.home / "kafka")
    poison = Producer(broker.client_config())
    poison.produce(config.CANDLES_TOPIC, b'{"symbol": "BTCUSDT", "open_time": "soon"}', key=b"BTCUSDT")
    assert poison.flush(10) == 0
    produced = ("market_anomaly_producer_candles_total", (("source", "ws"),))
    decided = ("market_anomaly_detect_candles_decided_total", ())
    batches = ("market_anomaly_detect_micro_batch_duration_seconds_count", ())
    first = {name: scrape(url) for name, url in demo.metrics_urls.items()}
    deadline = time.monotonic() + 120  # a loaded machine's micro-batches take seconds; progress arrives after them
    while True:
        time.sleep(2)
        second = {name: scrape(url) for name, url in demo.metrics_urls.items()}
        moved = [second[part][key] > first[part][key] for part, key in
                 (("producer", produced), ("detect", decided), ("detect", batches))]
        if (all(moved) and consumer_dead_letters(second["detect"])) or time.monotonic() > deadline:
            break

    assert first["producer"][("market_anomaly_producer_candles_total", (("source", "rest"),))] >= 1000 * len(SYMBOLS)
    assert second["producer"][produced] > first["producer"][produced] > 0
    assert second["producer"][("market_anomaly_producer_stale_symbols", ())] == 0
    assert second["producer"][("market_anomaly_producer_websocket_reconnects_total", ())] == 0

    assert second["detect"][decided] > first["detect"][decided] >= 1000 * len(SYMBOLS)  # the seeded history too
    assert second["detect"][batches] > first["detect"][batches] > 0
    anomalies = sum(value for (name, _), value in second["detect"].items() if name == "market_anomaly_detect_anomalies_total")
    assert anomalies >= len(INJECTIONS)
    lag = {labels: value for (name, labels), value in second["detect"].items()
           if name == "market_anomaly_detect_consumer_lag_records"}
    assert len(lag) == 4 and all(value < 1000 for value in lag.values()), lag  # four partitions, keeping up
    assert time.time() - second["detect"][("market_anomaly_detect_last_batch_timestamp_seconds", ())] < 30
    assert consumer_dead_letters(second["detect"]) >= 1, "the poison record was not counted as a dead letter"

    health = ("market_anomaly_dashboard_request_duration_seconds_count", (("route", "/api/health"),))
    assert second["dashboard"][health] >= 1
    assert ("market_anomaly_dashboard_event_streams", ()) in second["dashboard"]
    (demo.home.parent / "metrics-scrape.txt").write_text(
        "\n".join(f"{name}{dict(labels) or ''} {value:g}" for part in second.values()
                  for (name, labels), value in sorted(part.items()) if name.startswith("market_anomaly")))


def test_ctrl_c_stops_everything(demo):
    children = processes_of(demo.home.parent)
    assert len(children) >= 5, "expected up, broker, simulator, producer, job and dashboard"
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(120) == 0
    deadline = time.monotonic() + 10
    while processes_of(demo.home.parent) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(demo.home.parent) == []
