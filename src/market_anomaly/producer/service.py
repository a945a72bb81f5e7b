"""The producer: Binance kline WebSocket -> Kafka ``crypto-candles``, keyed by symbol.

One JSON message per closed candle (see docs/ARCHITECTURE.md). The idempotent producer
with ``acks=all`` means a retried send is never written twice; frames that cannot be
turned into a candle go to the dead-letter topic with the reason. SIGINT/SIGTERM flush
what is in flight and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError

from market_anomaly import config, metrics
from market_anomaly.candles.record import Candle, Rejected
from market_anomaly.exchange.discovery import SymbolSelection
from market_anomaly.kafka.dead_letter import DeadLetterPublisher
from market_anomaly.kafka.producing import produce_waiting, reliable_producer

log = logging.getLogger("market_anomaly.produce")


@dataclass(frozen=True)
class ProduceConfig:
    """What ``produce`` needs, built once by the command line (``cli.produce``)."""

    kafka: dict[str, str]  # client settings: bootstrap.servers and -X pairs
    selection: SymbolSelection  # explicit symbols, or every TRADING pair of some quote assets
    ws_url: str = config.BINANCE_WS_URL
    rest_url: str = config.BINANCE_REST_URL
    interval: str = "1m"
    topic: str = config.CANDLES_TOPIC
    dead_letter_topic: str = config.DEAD_LETTER_TOPIC
    seed_history: int = 0
    seed_files: tuple[Path, ...] = ()
    max_candles: int | None = None
    resume: bool = True             # continue each symbol from its last candle in the topic
    streams_per_connection: int = 200
    discovery_interval: float = 300.0
    stale_intervals: int = 3


def candles_from_files(paths: list[Path], interval: str, selection: SymbolSelection) -> list[Candle]:
    """The selected symbols' candles from history files, oldest first; columns a file lacks are NaN."""
    import numpy as np
    import pandas as pd

    from market_anomaly.candles.files import read_candles
    from market_anomaly.exchange.protocol import interval_ms

    frame = pd.concat([read_candles(path) for path in paths], ignore_index=True)
    frame = frame[frame["symbol"].map(selection.matches)].sort_values(["open_time", "symbol"], kind="stable")
    optional = {name: frame[name] if name in frame else np.nan
                for name in ("quote_volume", "taker_buy_base", "taker_buy_quote", "tick_size")}
    frame = frame.assign(**optional, trades=frame["trades"] if "trades" in frame else 0)
    step = interval_ms(interval)
    return [
        Candle(symbol=row.symbol, interval=interval, open_time=int(row.open_time),
               close_time=int(row.open_time) + step - 1, open=float(row.open), high=float(row.high),
               low=float(row.low), close=float(row.close), volume=float(row.volume),
               quote_volume=float(row.quote_volume), trades=int(row.trades), taker_buy_base=float(row.taker_buy_base),
               taker_buy_quote=float(row.taker_buy_quote), source="file",
               tick_size=float(row.tick_size) if row.tick_size > 0 else None)
        for row in frame.itertuples(index=False)
    ]


class CandleProducer:
    """Kafka side of the producer: delivery accounting, dead letters, flush on exit."""

    def __init__(self, client_config: dict[str, str], topic: str, dead_letter_topic: str):
        self.topic = topic
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self._producer = reliable_producer(client_config, linger_ms=5, compression_type="lz4")
        self.dead_letters = DeadLetterPublisher(client_config, dead_letter_topic, stage="producer")

    def _on_delivery(self, error: KafkaError | None, message) -> None:
        if error is None:
            self.delivered += 1
        else:
            # The idempotent producer has already retried; this is final, so it must be loud.
            self.failed += 1
            metrics.PRODUCER_DELIVERY_FAILURES.inc()
            log.error("delivery of %s failed: %s", message.key(), error)

    def send(self, item: Candle | Rejected) -> None:
        if isinstance(item, Rejected):
            self.dead_letters.publish(item.raw, item.reason)
            return
        produce_waiting(self._producer, self.topic, item.to_json(produced_at=int(time.time() * 1000)),
                        key=item.symbol, on_delivery=self._on_delivery)
        self.produced += 1
        metrics.candle_produced(item.symbol, item.open_time, item.source)

    def close(self, timeout: float = 30.0) -> int:
        remaining = self._producer.flush(timeout) + self.dead_letters.flush(timeout)
        if remaining:
            log.error("%d messages still undelivered after %.0fs", remaining, timeout)
        return remaining


async def pump(client, producer: CandleProducer, max_candles: int | None, stop: asyncio.Event) -> None:
    """Forward the client's candles until stopped or ``max_candles`` have been produced."""
    last_log = time.monotonic()
    stream = client.candles()
    try:
        while not stop.is_set():
            next_item = asyncio.ensure_future(anext(stream))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({next_item, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if next_item not in done:
                # Let the pending read unwind before closing the stream under it.
                next_item.cancel()
                await asyncio.gather(next_item, return_exceptions=True)
                break
            stopped.cancel()
            try:
                item = next_item.result()
            except StopAsyncIteration:
                break
            producer.send(item)
            if max_candles is not None and producer.produced >= max_candles:
                break
            if time.monotonic() - last_log >= 10:
                last_log = time.monotonic()
                log.info("produced %d candles (%d delivered, %d failed, %d dead-lettered)", producer.produced,
                         producer.delivered, producer.failed, producer.dead_letters.sent)
    finally:
        await stream.aclose()


def run(job: ProduceConfig) -> int:
    from market_anomaly.exchange.client import BinanceKlineClient
    from market_anomaly.exchange.discovery import UnknownSymbols
    from market_anomaly.producer.resume import last_open_times

    resume_from = {}
    if job.resume:
        resume_from = {symbol: open_time for symbol, open_time in
                       last_open_times(job.kafka, job.topic, job.interval,
                                       set(job.selection.symbols) or None).items()
                       if job.selection.matches(symbol)}
        log.info("resuming %d symbols from their last candle in %s", len(resume_from), job.topic)
    client = BinanceKlineClient(job.ws_url, job.rest_url, job.selection, job.interval, seed_history=job.seed_history,
                                resume_from=resume_from, streams_per_connection=job.streams_per_connection,
                                discovery_interval=job.discovery_interval, stale_intervals=job.stale_intervals)
    producer = CandleProducer(job.kafka, job.topic, job.dead_letter_topic)
    log.info("producing %s x %s from %s to %s at %s", job.selection.describe(), job.interval, job.ws_url,
             job.topic, job.kafka.get("bootstrap.servers"))

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await pump(client, producer, job.max_candles, stop)

    try:
        if job.seed_files:
            seeds = [candle for candle in candles_from_files(list(job.seed_files), job.interval, job.selection)
                     if candle.open_time > resume_from.get(candle.symbol, -1)]   # not twice after a restart
            for candle in seeds:
                producer.send(candle)
            log.info("seeded %d candles from %s", len(seeds), ", ".join(map(str, job.seed_files)))
        asyncio.run(main())
    except UnknownSymbols as error:
        log.error("produce: %s", error)
        return 2
    finally:
        remaining = producer.close()
        log.info("producer stopped: %d produced, %d delivered, %d failed, %d dead-lettered", producer.produced,
                 producer.delivered, producer.failed, producer.dead_letters.sent)
    return 1 if remaining or producer.failed else 0
