"""Rate limits shared by every worker: a sliding window per connection (and per chat) in Redis.

Vendors' limits: amoCRM 7 requests/s, Bitrix24 2/s with a burst of 50, Planfix 1/s,
Telegram 30 messages/s per bot, 1/s per chat, 20/minute per group (API-REFERENCE.md §8).

A `Limit(rate, burst)` allows at most `burst` calls in any window of `burst / rate` seconds:
(7, 7) is 7 calls in any second, (1/3, 20) is 20 calls in any minute, (2, 50) is 50 calls in any
25 s. The window is a log of the calls' times (a sorted set, Redis's own clock), so the limit holds
exactly in every window, not only on average: a token bucket whose burst is a second's worth lets
a full bucket and a second's refill through within one second, twice the limit. A call under
several limits (a Telegram message: the bot's, the chat's, a group's) takes a slot in all of them
at once or in none, in one script call.
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass

from redis import Redis

from connectors.base import RetryableApiError

# KEYS: the windows' logs of one call (a connection's, a chat's, a group's); ARGV: a unique member,
# then for each key the calls allowed and the window (ms). All or none: the call is logged in every
# window only if each has room; else nothing is logged and the reply is the milliseconds until the
# fullest has room (0 = go). Redis's clock, so that workers on machines whose clocks differ share
# one timeline.
SLIDING_WINDOW = """
local member = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local allowed, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= allowed then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, 1, tonumber(oldest[2]) + window - now + 1)
  end
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]) + 1000)
end
return 0
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

    def wait_time(self, bucket: str, limit: Limit, *more: tuple[str, Limit]) -> float:
        """Take a slot in every bucket named (0.0: the call is counted in each), or in none and say
        how long until all have room. One script call, however many buckets."""
        buckets = ((bucket, limit), *more)
        args: list[object] = [uuid.uuid4().hex]
        for _, each in buckets:
            args += (each.allowed, each.window_ms)
        waited_ms = self._script(keys=[f"{self.prefix}rate:{name}" for name, _ in buckets], args=args)
        return int(waited_ms) / 1000.0

    def acquire(self, bucket: str, limit: Limit, *more: tuple[str, Limit]) -> None:
        """Block until every bucket named has room, then take one slot in each at once."""
        deadline = time.monotonic() + self.max_wait
        while True:
            wait = self.wait_time(bucket, limit, *more)
            if wait <= 0:
                return
            if time.monotonic() + wait > deadline:
                names = ", ".join(name for name, _ in ((bucket, limit), *more))
                raise RetryableApiError(f"rate limit {names}: no slot within {self.max_wait:.0f} s",
                                        retry_after=wait)
            time.sleep(min(wait, 1.0))
