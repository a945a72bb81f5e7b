"""Soak benchmark: the producer on 2,000 pairs of the strict simulator for many minutes, at an accelerated clock.

    .venv/bin/python bench/exchange_soak.py [--pairs 2000] [--minutes 10] [--speed 30]

A local broker (temporary directory), ``market-anomaly exchange --pairs N --control`` with
100 ms REST latency, and ``market-anomaly produce --symbols all --quote USDT,BTC``, each a
process. Every --fault-every seconds one fault is injected in turn: a cut connection, a
serverShutdown, a 429 storm. At the end: reconnects (from the producer's log; only the cuts
should cause any), handovers, producer CPU (cores, from /proc) and peak RSS (VmHWM), and
what the simulator served against what is in Kafka (missing, duplicated), as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from market_anomaly.kafka import topics
from market_anomaly.kafka.broker import LocalBroker, free_port


def sim_call(base: str, action: str, **query) -> dict:
    if action == "report":
        request = urllib.request.Request(f"{base}/sim/report")
    else:
        request = urllib.request.Request(f"{base}/sim/{action}?" + "&".join(f"{k}={v}" for k, v in query.items()),
                                         method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def peak_rss_mb(pid: int) -> float:
    match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match[1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock minutes of streaming")
    parser.add_argument("--speed", type=float, default=30.0, help="simulated seconds per real second")
    parser.add_argument("--fault-every", type=float, default=120.0, metavar="SECONDS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        broker = LocalBroker(scratch / "kafka", port=0)
        broker.start()
        simulator = producer = None
        try:
            topic = "soak-candles"
            topics.ensure_topics(broker.client_config(), {topic: 4, f"{topic}-dlq": 1})
            port = free_port()
            simulator = subprocess.Popen(
                [sys.executable, "-m", "market_anomaly", "exchange", "--port", str(port), "--control", "--pairs",
                 str(args.pairs), "--speed", str(args.speed), "--history", "30", "--rest-latency", "0.1",
                 "--updates-per-candle", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert "listening" in simulator.stdout.readline()
            base = f"http://127.0.0.1:{port}"
            log_path = scratch / "producer.log"
            producer = subprocess.Popen(
                [sys.executable, "-m", "market_anomaly", "produce", "--bootstrap-servers", broker.bootstrap_servers,
                 "--ws-url", f"ws://127.0.0.1:{port}", "--rest-url", base, "--symbols", "all", "--quote",
                 "USDT,BTC", "--topic", topic, "--dead-letter-topic", f"{topic}-dlq", "--discovery-interval", "60"],
                stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
            started = time.monotonic()
            faults = {"cut": 0, "shutdown": 0, "storm": 0}
            cycle = ["cut", "shutdown", "storm"]
            next_fault = started + args.fault_every
            while time.monotonic() - started < args.minutes * 60:
                assert producer.poll() is None, log_path.read_text()[-3000:]
                if time.monotonic() >= next_fault:
                    fault = cycle[sum(faults.values()) % len(cycle)]
                    sim_call(base, fault, **({"grace": 3} if fault == "shutdown" else
                                             {"seconds": 5} if fault == "storm" else {}))
                    faults[fault] += 1
                    next_fault += args.fault_every
                time.sleep(1)
            wall = time.monotonic() - started
            cpu, rss = cpu_seconds(producer.pid), peak_rss_mb(producer.pid)
            before_stop = sim_call(base, "report")
            producer.send_signal(signal.SIGTERM)
            exit_code = producer.wait(120)
            report = sim_call(base, "report")

            step = report["interval_ms"]
            in_kafka: dict[str, list[int]] = {}
            for message in topics.read_to_end(broker.client_config(), topic, timeout=120):
                candle = json.loads(message.value())
                in_kafka.setdefault(candle["symbol"], []).append(candle["open_time"])
            first = max(times[0] for times in in_kafka.values())
            last = before_stop["now"] - 3 * step
            served = missing = 0
            for symbol, times in report["closes"].items():
                expected = {t for t in times if first <= t <= last}
                served += len(expected)
                missing += len(expected - set(in_kafka.get(symbol, [])))
            log = log_path.read_text()
            result = {
                "pairs": args.pairs, "wall_minutes": round(wall / 60, 1), "speed": args.speed,
                "simulated_intervals": (last - first) // step, "faults_injected": faults,
                "reconnects": len(re.findall(r"reconnecting in", log)),
                "handovers": len(re.findall(r"handed \d+ streams over", log)),
                "keepalive_timeouts": log.count("keepalive ping timeout"),
                "producer_cpu_cores": round(cpu / wall, 3), "producer_peak_rss_mb": round(rss, 1),
                "candles_in_kafka": sum(map(len, in_kafka.values())), "served_in_window": served,
                "missing": missing, "duplicated": sum(len(t) - len(set(t)) for t in in_kafka.values()),
                "bans": report["bans"], "policy_closes": report["policy_closes"], "producer_exit": exit_code,
                "load_average": os.getloadavg(),
            }
            print(json.dumps(result, indent=1))
            return 0 if missing == 0 and result["duplicated"] == 0 else 1
        finally:
            for process in (producer, simulator):
                if process is not None and process.poll() is None:
                    process.terminate()
                    process.wait(30)
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
