"""REST discipline shared by every task of a client: one request-weight budget, Retry-After for all.

Binance counts REQUEST_WEIGHT per IP per wall-clock minute and reports it in
``X-MBX-USED-WEIGHT-1M``; past the limit it answers 429 with ``Retry-After``, and an IP that
keeps asking before that time is banned (418). So ``RestBudget.get`` keeps under a share of
the limit, makes every caller wait out a Retry-After any one of them received, bounds how many
requests are in flight, retries 5xx and timeouts with back-off, and never retries other 4xx
(a bad symbol stays bad): those raise ``RestRejected`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp

from market_anomaly import metrics
from market_anomaly.exchange import protocol

log = logging.getLogger("market_anomaly.exchange.rest")


class ExponentialBackoff:
    """Delays of ``initial * 2**n`` capped at ``maximum``, each scaled by a random 50-100 % (jitter,
    so many clients dropped together do not reconnect together)."""

    def __init__(self, initial: float, maximum: float):
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class RestUnavailable(RuntimeError):
    """REST kept failing (5xx, timeouts, connection errors) after every retry."""


class RestRejected(RuntimeError):
    """The exchange refused the request for good (a 4xx other than 429/418, or an error body)."""

    def __init__(self, path: str, params: dict, status: int, body: object):
        self.status, self.body = status, body
        code = body.get("code") if isinstance(body, dict) else None
        message = body.get("msg") if isinstance(body, dict) else body
        self.code = code
        super().__init__(f"GET {path} {params} refused: HTTP {status} code {code}: {message}")


class RestBudget:
    """The weight budget, the Retry-After deadline and the in-flight bound all REST callers share."""

    def __init__(self, weight_limit: int = protocol.WEIGHT_LIMIT_PER_MINUTE, *, window: float = 60.0,
                 share: float = 0.8, concurrency: int = 8, attempts: int = 8,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0):
        self.allowed = int(weight_limit * share)   # the rest is headroom for other clients on the IP
        self.window = window
        self.attempts = attempts
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.used = 0                 # weight used in the current window, as far as we know
        self.window_start = 0.0
        self.blocked_until = 0.0      # wall-clock time before which nobody may ask (Retry-After)
        self.rate_limited = 0
        self._semaphore = asyncio.Semaphore(concurrency)

    def _roll_window(self, now: float) -> None:
        start = now // self.window * self.window
        if start != self.window_start:
            self.window_start, self.used = start, 0

    async def _wait_turn(self, weight: int) -> None:
        """Wait until a Retry-After has passed and ``weight`` fits the current window; then reserve it."""
        while True:
            now = time.time()
            self._roll_window(now)
            if now < self.blocked_until:
                await asyncio.sleep(self.blocked_until - now)
            elif self.used + weight > self.allowed:
                await asyncio.sleep(self.window_start + self.window - now + 0.05)
            else:
                self.used += weight
                return

    def _note(self, headers) -> None:
        used = headers.get(protocol.USED_WEIGHT_HEADER, "")
        if used.isdigit():
            self._roll_window(time.time())
            self.used = max(self.used, int(used))

    def _block(self, status: int, headers) -> float:
        retry_after = headers.get("Retry-After", "")
        delay = float(retry_after) if retry_after.isdigit() else 60.0
        self.blocked_until = max(self.blocked_until, time.time() + delay)
        self.rate_limited += 1
        metrics.REST_RATE_LIMITED.labels(status=str(status)).inc()
        return delay

    async def get(self, session: aiohttp.ClientSession, base_url: str, path: str, params: dict) -> object:
        """The JSON body of a successful GET; RestRejected for a 4xx, RestUnavailable after every retry failed."""
        weight = protocol.request_weight(path, params)
        backoff = ExponentialBackoff(self.backoff_initial, self.backoff_max)
        failures = 0
        while True:
            async with self._semaphore:
                await self._wait_turn(weight)
                try:
                    async with session.get(base_url + path, params=params) as response:
                        self._note(response.headers)
                        status = response.status
                        if status in (418, 429):
                            delay = self._block(status, response.headers)
                            log.warning("GET %s: HTTP %d, every request waits %.0fs (Retry-After)", path, status,
                                        delay)
                            continue          # not a failure of this request: it is retried once allowed
                        body = await response.json(content_type=None)
                        if 400 <= status < 500 or (status == 200 and isinstance(body, dict) and "code" in body):
                            raise RestRejected(path, params, status, body)
                        if status == 200:
                            return body
                        problem = f"HTTP {status} {body}"
                except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                    problem = f"{type(error).__name__}: {error}"
            failures += 1
            if failures >= self.attempts:
                raise RestUnavailable(f"GET {base_url}{path} {params} failed {failures} times; last: {problem}")
            delay = backoff.next_delay()
            log.warning("GET %s %s failed (%s); retrying in %.1fs", path, params, problem, delay)
            await asyncio.sleep(delay)
