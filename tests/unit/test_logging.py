"""Log output: text or JSON lines (--log-format), secrets hidden in both."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging
from market_anomaly import config
from market_anomaly.cli import configure_logging
configure_logging("INFO", {fmt!r})
config.kafka_settings("b:9092", {{"sasl.password": "hunter22-secret"}})
log = logging.getLogger("market_anomaly.test")
log.info("connected to %s with %s", "postgresql://app:pw@db/x", "hunter22-secret")
try:
    raise ValueError("line one\\nline two token=abc")
except ValueError:
    log.exception("failed")
"""


def run(fmt: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(fmt=fmt)], capture_output=True, text=True, timeout=60,
                            check=True)
    return result.stderr.splitlines()


def test_json_logs_are_one_event_per_line_without_secrets():
    lines = run("json")
    events = [json.loads(line) for line in lines]
    assert len(events) == 2  # the traceback's lines stay inside its event
    assert events[0]["level"] == "INFO" and events[0]["logger"] == "market_anomaly.test"
    assert events[0]["message"] == "connected to postgresql://app:***@db/x with ***"
    assert events[0]["time"].endswith("+00:00")
    assert "line two token=***" in events[1]["exception"] and events[1]["message"] == "failed"
    assert "hunter22" not in "".join(lines) and "abc" not in "".join(lines)


def test_text_logs_hide_secrets_too():
    text = "\n".join(run("text"))
    assert "INFO    market_anomaly.test: connected to postgresql://app:***@db/x with ***" in text
    assert "hunter22" not in text and "token=***" in text
