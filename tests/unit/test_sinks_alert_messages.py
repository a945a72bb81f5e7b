"""What a webhook receives: Slack text for alerts and updates, or the message itself as JSON."""

from __future__ import annotations

import json

import pytest

from market_anomaly.sinks.alerts import AlertSink, webhook_body

OPEN_TIME = 1_769_285_820_000  # 2026-01-24 20:17 UTC
DECISION = {"symbol": "SOLUSDT", "open_time": OPEN_TIME, "close": 142.3456, "return_pct": -4.5, "votes": 2,
            "confidence": "MEDIUM", "reasons": "FLASH 5.1σ | VOLUME 8x", "zscore": None}


def test_slack_alert_text():
    body = json.loads(webhook_body({"type": "anomaly", "symbol": "SOLUSDT", "decision": DECISION}, "slack"))
    assert body == {"text": ":rotating_light: *SOLUSDT* anomaly, MEDIUM confidence, at 2026-01-24 20:17 UTC: "
                            "FLASH 5.1σ | VOLUME 8x (close 142.346, return -4.50%, 2 votes)"}


def test_slack_update_text_and_generic_json():
    update = {"type": "update", "symbol": "SOLUSDT", "decision": {**DECISION, "open_time": OPEN_TIME + 300_000},
              "follow_ups": 1, "peak_confidence": "HIGH", "episode_started_at": OPEN_TIME, "episode_over": True}
    assert json.loads(webhook_body(update, "slack"))["text"] == (
        ":repeat: *SOLUSDT* episode since 2026-01-24 20:17 UTC: 1 more anomaly, peak HIGH; "
        "latest at 2026-01-24 20:22 UTC: FLASH 5.1σ | VOLUME 8x (episode over)")
    assert json.loads(webhook_body(update, "json")) == update  # None stays null


def test_options_are_checked():
    with pytest.raises(ValueError, match="webhook format"):
        AlertSink(["http://127.0.0.1:9/x"], fmt="teams")
    with pytest.raises(ValueError, match="minimum confidence"):
        AlertSink(["http://127.0.0.1:9/x"], min_confidence="EXTREME")
