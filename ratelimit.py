"""Rate limits shared by every worker: a token bucket per connection (and per chat) in Redis.

Vendors' limits: amoCRM 7 requests/s, Bitrix24 2/s with a burst of 50, Planfix 1/s,
Telegram 30 messages/s per bot, 1/s per chat, 20/minute per group (API-REFERENCE.md §8).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis

from connectors.base import RetryableApiError

# KEYS[1] bucket; ARGV: rate per second, burst, now (s), cost. Returns seconds to wait (0 = go).
TOKEN_BUCKET = """
local rate, burst, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
if tokens >= cost then
  redis.call('HSET', KEYS[1], 'tokens', tokens - cost, 'at', now)
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
  return '0'
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring((cost - tokens) / rate)
"""


@dataclass(frozen=True)
class Limit:
    """`rate` requests per second with bursts up to `burst`."""

    rate: float
    burst: float


class RateLimiter:
    """Blocks the caller until its bucket has a token; every process shares the buckets."""

    def __init__(self, store: Redis, prefix: str, *, max_wait: float = 120.0):
        self.store, self.prefix, self.max_wait = store, prefix, max_wait
        self._script = store.register_script(TOKEN_BUCKET)

    def wait_time(self, bucket: str, limit: Limit) -> float:
        """Take a token if there is one (0.0), else say how long until there will be."""
        return float(self._script(keys=[f"{self.prefix}rate:{bucket}"],
                                  args=[limit.rate, limit.burst, time.time(), 1]))

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
