"""What a webhook receives: Slack text for alerts and updates, or the message itself as JSON."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from market_anomaly.sinks.alerts import AlertSink, validate_webhook_url, webhook_body

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


def test_symbol_and_reasons_cannot_ping_the_channel_or_reach_the_terminal():
    hostile = {**DECISION, "symbol": "<!channel>SOL&USDT", "reasons": "VOLUME 8x <https://evil|click> \x1b[2J"}
    text = json.loads(webhook_body({"type": "anomaly", "symbol": "x", "decision": hostile}, "slack"))["text"]
    assert "*&lt;!channel&gt;SOL&amp;USDT*" in text
    assert "VOLUME 8x &lt;https://evil|click&gt; \\x1b[2J" in text
    assert "<" not in text and "\x1b" not in text


def test_non_finite_numbers_do_not_break_json_webhooks():
    message = {"type": "anomaly", "symbol": "SOLUSDT", "decision": {**DECISION, "zscore": float("inf"),
                                                                    "close": float("nan")}}
    assert json.loads(webhook_body(message, "json"))["decision"]["zscore"] is None


@pytest.mark.parametrize("url", ["hooks.slack.com/services/T0/B0/s3cr3t", "ftp://example.com/s3cr3t",
                                 "https:///s3cr3t", "slack"])
def test_webhook_urls_need_a_scheme_and_a_host_and_errors_hide_the_token(url):
    with pytest.raises(ValueError, match="not an http:// or https:// URL") as failure:
        validate_webhook_url(url)
    assert "s3cr3t" not in str(failure.value)
    with pytest.raises(ValueError, match="not an http"):
        AlertSink([url])


def test_write_returns_the_messages_it_made_at_the_minimum_confidence_and_above():
    decisions = pd.DataFrame([
        {**DECISION, "open_time": OPEN_TIME, "is_anomaly": True, "confidence": "LOW"},
        {**DECISION, "open_time": OPEN_TIME + 60_000, "is_anomaly": True, "confidence": "HIGH"},
        {**DECISION, "open_time": OPEN_TIME + 120_000, "is_anomaly": True, "confidence": "MEDIUM"},  # same episode
        {**DECISION, "symbol": "ETHUSDT", "is_anomaly": False, "confidence": "NONE"},
    ])
    made = AlertSink([], fmt="json").write(decisions)  # no webhook: nothing is delivered, the messages are made
    assert [(message["type"], message["id"]) for message in made] == [("anomaly", f"SOLUSDT-{OPEN_TIME + 60_000}-anomaly")]
