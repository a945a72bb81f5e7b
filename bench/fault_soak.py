"""Fault soak (issue 13; a benchmark, not a test, not in CI): the fault suite's pipeline for an hour, a random fault
every few minutes, then what was lost or duplicated.

    PYTHONPATH=src .venv/bin/python bench/fault_soak.py [--minutes 60] [--fault-every 4] [--outage-seconds 60]
                                                        [--seed 1] [--speed 120]

The pipeline of tests/faults (``harness.Pipeline``: a replayed 2025 market at ``--speed``x with
anomalies injected through the run, `produce`, `detect` with SQLite and a JSON webhook, each a
process) on its own local broker. Every ``--fault-every`` minutes (jittered by +-50%, drawn with
``--seed``) one fault from ``FAULTS``, in shuffled rounds (each kind once per round): ``kill -9`` of `detect` and restart, broker ``kill -9`` and
restart, a WebSocket cut, ``kill -9`` of the producer and restart, the SQLite file locked for
``--outage-seconds``, the webhook answering 500 for ``--outage-seconds``. A part that exits on
its own is counted and restarted. At the end the pipeline settles and one JSON object is printed:
candles served (by the exchange's REST, the truth), decided, lost, duplicated, decisions that
differ from an uninterrupted offline run, faults applied, alerts expected/delivered/duplicated,
runtime and each part's peak RSS (the summed VmRSS of its process tree, sampled every few seconds, and what made
it up per command).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from market_anomaly.kafka.broker import LocalBroker
from market_anomaly.training.injection import KINDS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "faults"))  # the fault suite's harness
from harness import COMPARED, SYMBOLS, Pipeline, Receiver, expected_alert_ids, replay_files  # noqa: E402
from process_memory import tree_resident_bytes  # noqa: E402  (bench/, the script's own directory)

FAULTS = ("detect_kill", "broker_kill", "websocket_cut", "producer_kill", "sqlite_lock", "webhook_500")
SAMPLE_SECONDS = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="how long the run lasts: the seeded history first, then faults (default: 60)")
    parser.add_argument("--fault-every", type=float, default=4.0, metavar="MINUTES",
                        help="mean time between two faults (default: 4)")
    parser.add_argument("--outage-seconds", type=float, default=60.0,
                        help="how long the SQLite lock and the webhook's 500s last (default: 60)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=120.0, help="market minutes per minute (default: 120)")
    parser.add_argument("--faults", default=",".join(FAULTS), help="the kinds to draw from (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the logs here (default: a temporary one)")
    args = parser.parse_args()
    kinds = args.faults.split(",")
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")

    rng = random.Random(args.seed)
    home = args.workdir or Path(tempfile.mkdtemp(prefix="market-anomaly-fault-soak-"))
    home.mkdir(parents=True, exist_ok=True)
    print(f"fault soak in {home}", file=sys.stderr)
    history = 1000
    live_minutes = int(args.speed * (args.minutes + 20))  # the run, the settling, and a margin
    files = replay_files(home, candles=history + live_minutes + 100)
    # Anomalies through the whole run (not only the suite's first few hours), so alerts keep coming.
    injections = [f"{rng.choice(KINDS)}:{rng.choice(SYMBOLS)}:{minute}"
                  for minute in sorted(rng.sample(range(30, int(args.speed * args.minutes)), int(args.minutes)))]

    broker = LocalBroker(home / "kafka", port=0)
    broker.start()
    receiver = Receiver()
    pipeline = Pipeline(home / "pipeline", broker.bootstrap_servers, f"sqlite:///{home / 'anomalies.db'}", receiver,
                        speed=args.speed, replay=tuple(files), history=history, topic="soak",
                        exchange_flags=("--control", *[f for i in injections for f in ("--inject", i)]))
    pipeline.create_topics()
    soak = Soak(pipeline, broker, args.outage_seconds)
    started = time.monotonic()
    try:
        pipeline.start()
        pipeline.wait_for_rows(history * len(SYMBOLS), timeout=600)  # the seeded history, before any fault
        end, faults = started + args.minutes * 60, shuffled_rounds(kinds, rng)
        while time.monotonic() < end:
            soak.idle(min(end, time.monotonic() + args.fault_every * 60 * rng.uniform(0.5, 1.5)))
            if time.monotonic() < end:
                soak.apply(next(faults))
        report = soak.report(started)
    finally:
        pipeline.stop()
        broker.stop()
        receiver.close()
    report.update(minutes=args.minutes, fault_every_minutes=args.fault_every, outage_seconds=args.outage_seconds,
                  seed=args.seed, speed=args.speed, workdir=str(home))
    print(json.dumps(report))
    return 0 if report["lost"] == report["duplicated"] == report["differing"] == 0 else 1


def shuffled_rounds(kinds: list[str], rng: random.Random):
    """The faults in rounds, each kind once per round in a random order: every kind is applied in a run of
    at least ``len(kinds)`` faults (independent draws left two of six kinds out of a 30-minute run)."""
    while True:
        round_ = list(kinds)
        rng.shuffle(round_)
        yield from round_


class Soak:
    """Applies faults to a running pipeline, restarts what exits on its own, and keeps the peaks of memory."""

    def __init__(self, pipeline: Pipeline, broker: LocalBroker, outage_seconds: float):
        self.pipeline = pipeline
        self.broker = broker
        self.outage_seconds = outage_seconds
        self.applied: Counter = Counter()
        self.sequence: list[tuple[int, str]] = []
        self.unexpected_exits: Counter = Counter()
        self.peak_rss_mb: dict[str, float] = {}
        self.peak_rss_parts: dict[str, dict[str, float]] = {}
        self.started = time.monotonic()

    def idle(self, until: float) -> None:
        """Watch the pipeline until ``until`` (monotonic)."""
        while time.monotonic() < until:
            self.watch()
            time.sleep(max(0.0, min(SAMPLE_SECONDS, until - time.monotonic())))

    def watch(self) -> None:
        for name, service in self.pipeline.services.items():
            if not service.running():
                self.unexpected_exits[name] += 1
                print(f"{name} exited on its own (code {service.process.returncode}); restarting", file=sys.stderr)
                service.start()
            self._peak(name, service.process.pid)
        if self.broker.pid():
            self._peak("broker", self.broker.pid())

    def _peak(self, name: str, pid: int) -> None:
        """Keep a part's peak resident memory, with what made it up (MB per command: java, python, ...)."""
        by_command = tree_resident_bytes(pid)
        megabytes = round(sum(by_command.values()) / 2**20, 1)
        if megabytes > self.peak_rss_mb.get(name, 0.0):
            self.peak_rss_mb[name] = megabytes
            self.peak_rss_parts[name] = {command: round(size / 2**20, 1) for command, size in by_command.items()}

    def apply(self, kind: str) -> None:
        self.applied[kind] += 1
        self.sequence.append((int(time.monotonic() - self.started), kind))
        print(f"{time.strftime('%H:%M:%S')} fault {kind}", file=sys.stderr, flush=True)
        pipeline = self.pipeline
        if kind in ("detect_kill", "producer_kill"):
            service = pipeline["detect" if kind == "detect_kill" else "produce"]
            service.kill()
            time.sleep(5)  # a crash, then whatever restarts it (not watched: watch() would restart it at once)
            service.start()
        elif kind == "broker_kill":
            os.kill(self.broker.pid(), signal.SIGKILL)
            time.sleep(15)  # the producer buffers and the job retries meanwhile
            self.broker.start()
        elif kind == "websocket_cut":
            request = urllib.request.Request(pipeline.rest_url + "/sim/cut", method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert json.loads(response.read())["ok"]
        elif kind == "sqlite_lock":
            lock = sqlite3.connect(pipeline.db_url.split("///", 1)[1], isolation_level=None)
            lock.execute("BEGIN EXCLUSIVE")  # every writer waits past its busy timeout, again and again
            try:
                self.idle(time.monotonic() + self.outage_seconds)
            finally:
                lock.execute("COMMIT")
                lock.close()
        elif kind == "webhook_500":
            pipeline.receiver.status = 500
            try:
                self.idle(time.monotonic() + self.outage_seconds)
            finally:
                pipeline.receiver.status = 200

    def report(self, started: float) -> dict:
        """Let the pipeline settle, then count against the exchange's truth and an offline run."""
        faults_over = time.monotonic()
        outcome = self.pipeline.settle(timeout=900)
        streamed, offline = outcome.compared()
        differing = (streamed[list(COMPARED)].to_numpy() != offline[list(COMPARED)].to_numpy()).any(axis=1)
        expected = expected_alert_ids(offline.reset_index())
        undelivered = self.pipeline.wait_for_alerts(expected, timeout=600)
        self.watch()
        ids = self.pipeline.receiver.ids()
        return {
            "candles_served": len(outcome.served), "decided": len(set(outcome.keys)), "lost": len(outcome.lost),
            "duplicated": outcome.duplicated, "decided_unserved": len(outcome.unserved),
            "differing": int(differing.sum()),
            "faults": dict(self.applied), "fault_count": sum(self.applied.values()), "fault_sequence": self.sequence,
            "alerts_expected": len(expected), "alerts_delivered": len(expected & set(ids)),
            "alerts_undelivered": len(undelivered), "alerts_duplicated": sum(1 for n in ids.values() if n > 1),
            "unexpected_exits": dict(self.unexpected_exits), "detect_running": self.pipeline["detect"].running(),
            "runtime_seconds": round(time.monotonic() - started),
            "settle_seconds": round(time.monotonic() - faults_over),
            "peak_rss_mb": self.peak_rss_mb, "peak_rss_parts_mb": self.peak_rss_parts,
            "soak_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


if __name__ == "__main__":
    sys.exit(main())
