"""The pipeline as real processes, for the fault suite and the soak benchmark.

`market-anomaly exchange` (an accelerated synthetic market with injected anomalies), `produce`
and `detect` (SQLite or PostgreSQL, JSON webhooks) run as subprocesses against a real broker;
a webhook receiver runs in this process and can be told to fail. ``Pipeline.verify`` checks the
suite's contract up to a cutoff in market time:

- the database holds exactly one row per candle the exchange served (by REST, the truth);
- those decisions equal an uninterrupted offline run of the detection core over the same candles;
- every MEDIUM+ alert the offline decisions call for reached the receiver exactly once (by id);
- the job is still running.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

import market_anomaly
from market_anomaly.candles.validation import MAX_RAW_BYTES, Limits
from market_anomaly.candles.validation import reason as validation_reason
from market_anomaly.kafka.broker import free_port
from market_anomaly.kafka.topics import read_to_end

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = Path(market_anomaly.__file__).resolve().parents[1]
COMMAND = (sys.executable, "-m", "market_anomaly", "--log-level", "INFO")
MINUTE_MS = 60_000
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
REPLAY_START = 1_735_689_600_000  # 2025-01-01 UTC
# Live minutes after the exchange's start; at the default speed they arrive during every case.
INJECTIONS = ("price_spike:AAAUSDT:40", "volume_burst:BBBUSDT:70", "flash_crash:CCCUSDT:100",
              "pump_and_dump:AAAUSDT:160", "price_spike:BBBUSDT:220")
COMPARED = ("votes", "is_anomaly", "confidence")


class Receiver:
    """A real HTTP webhook receiver: answers ``status`` (settable), records the ids of what it accepted."""

    def __init__(self):
        receiver = self
        self.status = 200
        self.accepted: list[dict] = []
        self.refused = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.status
                if status == 200:
                    receiver.accepted.append(json.loads(body))
                else:
                    receiver.refused += 1
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> Counter:
        return Counter(message["id"] for message in self.accepted)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Service:
    """One `market-anomaly` command as a subprocess, its output in ``<home>/<name>-<n>.log``."""

    name: str
    argv: list[str]
    home: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.home / f"{self.name}-{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen([*COMMAND, *self.argv], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.home, env=self.env, start_new_session=True)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the command and everything it started (Spark's JVM too): a crash, nothing flushed."""
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 120.0) -> int | None:
        if not self.running():
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # whatever of its group outlived it
            except ProcessLookupError:
                pass

    def logs(self, tail: int = 4000) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
                         for path in sorted(self.home.glob(f"{self.name}-*.log")))


@dataclass
class Pipeline:
    """Exchange -> produce -> broker -> detect -> database + webhook, each part killable and restartable."""

    home: Path
    bootstrap: str
    db_url: str
    receiver: Receiver
    speed: float = 300.0
    replay: tuple[Path, ...] = ()
    symbols: tuple[str, ...] = SYMBOLS
    history: int = 1000
    detect_flags: tuple[str, ...] = ()
    exchange_flags: tuple[str, ...] = ()
    topic: str = "candles"
    services: dict[str, Service] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.names = {"candles": self.topic, "dead": f"{self.topic}-dead", "decisions": f"{self.topic}-decisions"}
        # The commands run the package this process imported (a relative PYTHONPATH would not hold in their cwd).
        env = {**os.environ, "MARKET_ANOMALY_HOME": str(self.home),
               "PYTHONPATH": os.pathsep.join(filter(None, (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))))}
        port = free_port()
        self.rest_url = f"http://127.0.0.1:{port}"
        kafka = ["--bootstrap-servers", self.bootstrap]
        self.services = {
            "exchange": Service("exchange", [
                "exchange", "--port", str(port), "--replay", *map(str, self.replay), "--speed", str(self.speed),
                "--history", str(self.history), "--seed", "11",
                *[flag for injection in INJECTIONS if injection.split(":")[1] in self.symbols
                  for flag in ("--inject", injection)], *self.exchange_flags], self.home, env),
            "produce": Service("produce", [
                "produce", *kafka, "--ws-url", f"ws://127.0.0.1:{port}", "--rest-url", self.rest_url,
                "--symbols", ",".join(self.symbols), "--topic", self.names["candles"],
                "--dead-letter-topic", self.names["dead"], "--seed-history", str(self.history)], self.home, env),
            "detect": Service("detect", [
                "detect", *kafka, "--topic", self.names["candles"], "--dead-letter-topic", self.names["dead"],
                "--anomalies-topic", self.names["decisions"], "--db", self.db_url,
                "--checkpoint-dir", str(self.home / "checkpoint"), "--console", "off",
                "--params", str(REPOSITORY / "model_params.json"),
                "--webhook", self.receiver.url, "--webhook-format", "json", "--max-offsets-per-trigger", "600",
                *self.detect_flags], self.home, env),
        }

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def create_topics(self, replication: tuple[int, int | None] = (1, None)) -> None:
        """The pipeline's topics; ``replication``: (replication factor, min.insync.replicas)."""
        from market_anomaly.kafka import topics

        topics.ensure_topics({"bootstrap.servers": self.bootstrap}, {self.names["candles"]: 4, self.names["dead"]: 1,
                                                                     self.names["decisions"]: 4}, *replication)

    def start(self) -> None:
        self["exchange"].start()
        self.wait_until(lambda: self._get("/api/v3/ping") is not None, 60, "the exchange did not answer")
        self["produce"].start()
        self["detect"].start()

    def stop(self) -> None:
        for name in ("produce", "detect", "exchange"):
            self[name].stop()

    def logs(self) -> str:
        return "\n".join(service.logs() for service in self.services.values())

    # -- the exchange's truth ------------------------------------------------------------------

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(self.rest_url + path, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def market_time(self) -> int:
        """The exchange's clock (ms)."""
        return int(self._get("/api/v3/time")["serverTime"])

    def served(self, start: int, cutoff: int) -> set[tuple[str, int]]:
        """(symbol, open_time) of every closed candle the exchange serves from ``start`` to ``cutoff``."""
        served = set()
        for symbol in self.symbols:
            since = start
            while since <= cutoff:
                rows = self._get(f"/api/v3/klines?symbol={symbol}&interval=1m&startTime={since}"
                                 f"&endTime={cutoff}&limit=1000")
                if not rows:
                    break
                served.update((symbol, int(row[0])) for row in rows)
                since = int(rows[-1][0]) + MINUTE_MS
        return served

    # -- what the pipeline made ----------------------------------------------------------------

    def decisions(self) -> pd.DataFrame:
        query = "SELECT symbol, open_time, votes, is_anomaly, confidence, reasons FROM decisions"
        try:
            if self.db_url.startswith("sqlite"):
                with sqlite3.connect(self.db_url.split("///", 1)[1], timeout=60) as connection:
                    frame = pd.read_sql_query(query, connection)
            else:
                import psycopg

                with psycopg.connect(self.db_url) as connection:
                    rows = connection.execute(query).fetchall()
                frame = pd.DataFrame(rows, columns=["symbol", "open_time", "votes", "is_anomaly", "confidence",
                                                    "reasons"])
        except Exception:  # noqa: BLE001 (the job has not created its schema yet, or the database is down)
            return pd.DataFrame(columns=["symbol", "open_time", "votes", "is_anomaly", "confidence", "reasons"])
        frame = frame[frame.symbol.isin(self.symbols)]
        return frame.astype({"open_time": "int64", "votes": "int64", "is_anomaly": bool})

    def candles(self) -> pd.DataFrame:
        """The candle topic's valid records of the pipeline's symbols, as the job reads them: poison records
        carrying a real symbol (no ``open_time``, one from 1970 or 2100, an infinite price) are not candles."""
        limits = Limits(interval="1m", present_ms=int(time.time() * 1000))
        records = []
        for message in read_to_end({"bootstrap.servers": self.bootstrap}, self.names["candles"], timeout=60):
            if len(message.value() or b"") > MAX_RAW_BYTES:
                continue
            try:
                record = json.loads(message.value())
            except ValueError:  # not JSON, or not UTF-8
                continue
            if (isinstance(record, dict) and record.get("symbol") in self.symbols
                    and validation_reason(record, limits) is None):
                records.append(record)
        return pd.DataFrame(records)

    def wait_for_rows(self, count: int, timeout: float) -> None:
        self.wait_until(lambda: len(self.decisions()) >= count, timeout, f"fewer than {count} decisions")

    def wait_until(self, condition, timeout: float, problem: str) -> None:
        """Poll ``condition`` every second; fail with ``problem`` and the parts' logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(1.0)
        raise AssertionError(f"{problem} within {timeout:.0f}s\n{self.logs()}")

    # -- the contract ----------------------------------------------------------------------------

    def settle(self, timeout: float = 300.0) -> "Outcome":
        """Wait (up to ``timeout``, or until the job dies) until every candle served up to now is decided;
        what the pipeline made of the candles served up to then, lost ones included."""
        cutoff = self.market_time() // MINUTE_MS * MINUTE_MS - 2 * MINUTE_MS
        deadline = time.monotonic() + timeout
        while True:
            candles = self.candles()
            first = candles.groupby("symbol").open_time.min().to_dict() if len(candles) else {}
            served = self.served(min(first.values()), cutoff) if len(first) == len(self.symbols) else set()
            served = {(symbol, open_time) for symbol, open_time in served if open_time >= first[symbol]}
            rows = self.decisions()
            rows = rows[rows.open_time <= cutoff]
            outcome = Outcome(served, rows, candles[candles.open_time <= cutoff] if len(candles) else candles)
            if (served and not outcome.lost) or time.monotonic() > deadline or not self["detect"].running():
                return outcome
            time.sleep(2.0)

    def wait_for_alerts(self, expected: set[str], timeout: float) -> set[str]:
        """The ids of ``expected`` still undelivered after waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while (missing := expected - set(self.receiver.ids())) and time.monotonic() < deadline:
            time.sleep(1.0)
        return missing

    def verify(self, timeout: float = 300.0, alerts: bool = True) -> dict[str, int]:
        """Wait until every candle served up to now is decided, then check the contract; returns the counts."""
        outcome = self.settle(timeout)
        if not outcome.served or outcome.lost:
            missing = sorted(outcome.lost)
            raise AssertionError(f"{len(missing)} of {len(outcome.served)} served candles undecided "
                                 f"(detect running: {self['detect'].running()}), e.g. {missing[:5]}\n{self.logs()}")
        assert not outcome.duplicated, "duplicate decisions"
        assert not outcome.unserved, f"decisions of candles never served: {sorted(outcome.unserved)[:5]}"
        streamed, offline = outcome.compared()
        for column in COMPARED:
            differs = streamed[column].to_numpy() != offline[column].to_numpy()
            assert not differs.any(), (f"{column} differs from the offline run at "
                                       f"{list(streamed.index[differs][:5])}")
        assert [strip_market(r) for r in streamed.reasons.fillna("")] == [strip_market(r) for r in offline.reasons]

        expected = expected_alert_ids(offline.reset_index()) if alerts else set()
        missing = self.wait_for_alerts(expected, timeout)
        assert not missing, f"alerts {sorted(missing)} not delivered within {timeout:.0f}s\n{self.logs()}"
        repeated = {key: count for key, count in self.receiver.ids().items() if count > 1}
        assert not repeated, f"alerts delivered more than once: {repeated}"
        assert self["detect"].running(), self["detect"].logs()
        return {"served": len(outcome.served), "decided": len(outcome.keys), "lost": len(outcome.lost),
                "duplicated": outcome.duplicated, "alerts": len(expected),
                "anomalies": int(streamed.is_anomaly.sum())}


@dataclass
class Outcome:
    """The candles the exchange served up to a cutoff, and what the pipeline decided of them."""

    served: set[tuple[str, int]]
    rows: pd.DataFrame  # the database's decisions up to the cutoff
    candles: pd.DataFrame  # the candle topic's valid records up to the cutoff

    @property
    def keys(self) -> list[tuple[str, int]]:
        return list(zip(self.rows.symbol, self.rows.open_time))

    @property
    def lost(self) -> set[tuple[str, int]]:
        return self.served - set(self.keys)

    @property
    def duplicated(self) -> int:
        return len(self.keys) - len(set(self.keys))

    @property
    def unserved(self) -> set[tuple[str, int]]:
        return set(self.keys) - self.served

    def compared(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The streamed decisions and an uninterrupted offline run's of the same candles, on one index."""
        streamed = self.rows.drop_duplicates(["symbol", "open_time"]).set_index(["symbol", "open_time"]).sort_index()
        offline = offline_decisions(self.candles).set_index(["symbol", "open_time"])
        index = streamed.index.intersection(offline.index)  # verify() has checked they are the same
        return streamed.loc[index], offline.loc[index]


def replay_files(directory: Path, candles: int = 6000) -> list[Path]:
    """``SYMBOLS``' synthetic 1m candles from 2025 on, as files the exchange replays: market time stays in the
    past however fast it runs, so the job checks ``open_time`` against the present as it does live."""
    from market_anomaly.exchange.market import synthetic_candles

    paths = []
    for seed, symbol in enumerate(SYMBOLS):
        frame = synthetic_candles(candles, seed + 3, symbol)
        frame = frame.assign(timestamp=REPLAY_START + MINUTE_MS * frame.index.to_numpy())
        path = directory / f"{symbol}_1m.csv"
        frame[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(path, index=False)
        paths.append(path)
    return paths


def strip_market(reasons: str) -> str:
    """Reasons without the market-wide context (which depends on which symbols share a micro-batch)."""
    return " | ".join(reason for reason in (reasons or "").split(" | ") if reason and not reason.startswith("MARKET"))


def offline_decisions(candles: pd.DataFrame) -> pd.DataFrame:
    """The detection core over each symbol's candles in one uninterrupted pass (as `score` runs it)."""
    from market_anomaly.core import DetectionEngine, ParamsWatcher

    engine = DetectionEngine(ParamsWatcher(str(REPOSITORY / "model_params.json")).current())
    frames = []
    for symbol, group in candles.drop_duplicates(["symbol", "open_time"]).groupby("symbol"):
        decided, _ = engine.process(symbol, group.sort_values("open_time"), None)
        frames.append(decided.assign(symbol=symbol))
    frame = pd.concat(frames, ignore_index=True)
    return frame.assign(reasons=frame.reasons.fillna("")).astype({"votes": "int64", "is_anomaly": bool})


def expected_alert_ids(decisions: pd.DataFrame) -> set[str]:
    """The ids of the alerts (not updates) the alert sink makes from these decisions."""
    from market_anomaly.sinks.alerts import AlertSink

    made = AlertSink([], fmt="json").write(decisions)  # no webhook: the episodes' messages, nothing delivered
    return {message["id"] for message in made if message["type"] == "anomaly"}
