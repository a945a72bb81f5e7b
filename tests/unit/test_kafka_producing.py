"""The project's producers: reliable by default, the user's -X settings win."""

from __future__ import annotations

import doctest

from market_anomaly.kafka import producing
from market_anomaly.kafka.producing import producer_config


def test_user_settings_win_over_the_reliable_defaults_and_extra_defaults_apply():
    config = producer_config({"bootstrap.servers": "b:9092", "enable.idempotence": "false"},
                             linger_ms=5, compression_type="lz4")
    assert config == {"enable.idempotence": "false", "acks": "all", "linger.ms": 5, "compression.type": "lz4",
                      "bootstrap.servers": "b:9092"}
    assert producer_config({"bootstrap.servers": "b:9092"})["enable.idempotence"] is True


def test_docstring_examples():
    result = doctest.testmod(producing)
    assert result.attempted > 0 and result.failed == 0
