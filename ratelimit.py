"""Rate limits shared by every worker: a sliding window per connection (and per chat) in Redis.

Vendors' limits: amoCRM 7 requests/s, Bitrix24 2/s with a burst of 50, Planfix 1/s,
Telegram 30 messages/s per bot, 1/s per chat, 20/minute per group (API-REFERENCE.md §8).

A `Limit(rate, burst)` allows at most `burst` calls in any window of `burst / rate` seconds:
(7, 7) is 7 calls in any second, (1/3, 20) is 20 calls in any minute, (2, 50) is 50 calls in any
25 s. The window is a log of the calls' times (a sorted set, Redis's own clock), so the limit holds
exactly in every window, not only on average: a token bucket whose burst is a second's worth lets
a full bucket and a second's refill through within one second, twice the limit.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from redis import Redis

from connectors.base import RetryableApiError

# KEYS[1] the window's log; ARGV: calls allowed, window (ms), a unique member.
# Returns the milliseconds to wait (0 = go: the call is logged). Redis's clock, so that workers
# on machines whose clocks differ share one timeline.
SLIDING_WINDOW = """
local allowed, window, member = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < allowed then
  redis.call('ZADD', KEYS[1], now, member)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now + 1)
"""


@dataclass(frozen=True)
class Limit:
    """At most `burst` calls in any `burst / rate` seconds (`rate` per second on average)."""

    rate: float
    burst: float

    @property
    def allowed(self) -> int:
        return max(1, math.floor(self.burst))

    @property
    def window_ms(self) -> int:
        return max(1, math.ceil(1000 * self.allowed / self.rate))


class RateLimiter:
    """Blocks the caller until its window has room; every process shares the windows."""

    def __init__(self, store: Redis, prefix: str, *, max_wait: float = 120.0):
        self.store, self.prefix, self.max_wait = store, prefix, max_wait
        self._script = store.register_script(SLIDING_WINDOW)

    def wait_time(self, bucket: str, limit: Limit) -> float:
        """Take a slot if there is one (0.0, the call is counted), else say how long until there is."""
        waited_ms = self._script(keys=[f"{self.prefix}rate:{bucket}"],
                                 args=[limit.allowed, limit.window_ms, uuid.uuid4().hex])
        return int(waited_ms) / 1000.0

    def acquire(self, bucket: str, limit: Limit) -> None:
        deadline = time.monotonic() + self.max_wait
        while True:
            wait = self.wait_time(bucket, limit)
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                raise RetryableApiError(f"rate limit {bucket}: no slot within {self.max_wait:.0f} s",
                                        retry_after=wait)
            time.sleep(min(wait, 1.0))
