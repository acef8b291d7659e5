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

The limit must hold where the vendor counts, not where the slot is handed out: a call granted at
t reaches the vendor at some moment between t and its answer, and two calls granted a window apart
may arrive less than a window apart (the first one delayed by a Redis write, a busy CPU, the
network). So a call that `hold`s its slot is logged as arriving as late as it possibly can (the
grant plus `hold`, the client's timeouts) until its answer comes, and then at the answer's time
(`release`), an upper bound of its arrival. A later call is granted only when the window ending
at its grant holds fewer than `burst` such upper bounds, so no window at the vendor can hold more,
however long the transit was. `Limit.margin` lengthens the window on top (default 10 % in
connections.yaml): for the vendor's own rounding and clock, and for calls that do not hold.

A worker does not sleep on one chat's, group's or account's limit while other work is ready: inside
a job run under `deferring(patience)` (worker.handle_event), a call whose slot is further away than
`patience` seconds raises SlotLater (nothing was sent) and the job goes back to the queue with that
delay (pipeline/resume.py), resuming where it left off. A wait caused by calls still in flight (held
slots, whose real end is their answer) is polled for up to `patience` first; a wait caused by calls
already answered is certain, and deferred at once.
"""
from __future__ import annotations

import contextvars
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

import metrics
from connectors.base import RetryableApiError

log = logging.getLogger("crmbridge.ratelimit")

DEFAULT_MARGIN = 0.10

# KEYS: the windows' logs of one call (a connection's, a chat's, a group's); ARGV: a unique member,
# the milliseconds the call holds its slot (it is logged that far ahead of now until released), then
# for each key the calls allowed and the window (ms). All or none: the call is logged in every window
# only if each has room; else nothing is logged and the reply is the milliseconds until the fullest
# has room (0 = go), and 1 if that wait is certain (the call blocking it was answered: it is logged
# in the past) or 0 if it may end early (a held call still in flight, logged ahead of now). Redis's
# clock, so that workers on machines whose clocks differ share one timeline.
SLIDING_WINDOW = """
local member, hold = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, certain = 0, 1
for i, key in ipairs(KEYS) do
  local allowed, window = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count >= allowed then
    -- room comes when all but allowed - 1 of the logged calls have left the window
    local blocking = redis.call('ZRANGE', key, count - allowed, count - allowed, 'WITHSCORES')
    local room = math.max(1, tonumber(blocking[2]) + window - now + 1)
    if room > wait then
      wait = room
      if tonumber(blocking[2]) > now then certain = 0 else certain = 1 end
    end
  end
end
if wait > 0 then
  return {wait, certain}
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + hold, member)
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 2]) + hold + 1000)
end
return {0, 1}
"""

# KEYS: the windows a held call was logged in; ARGV: its member, then each window (ms). The call is
# logged at now (Redis's clock), the answer's time; a log that expired meanwhile gets a TTL again.
RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[i + 1])
  redis.call('ZADD', key, now, ARGV[1])
  if redis.call('PTTL', key) < window + 1000 then
    redis.call('PEXPIRE', key, window + 1000)
  end
end
return 0
"""


# seconds a job may wait for a slot before it is deferred instead (None: outside such a job, wait)
_PATIENCE: contextvars.ContextVar[float | None] = contextvars.ContextVar("crmbridge_rate_patience", default=None)


class SlotLater(RetryableApiError):
    """No slot within the job's patience: nothing was sent. `retry_after`: seconds until there is
    room (an upper bound when `certain` is False). Not retried inside the job (pipeline/retry.py):
    the job is deferred (pipeline/resume.py)."""

    def __init__(self, message: str, *, retry_after: float, certain: bool):
        super().__init__(message, retry_after=retry_after)
        self.certain = certain


@contextmanager
def deferring(patience: float | None) -> Iterator[None]:
    """Inside this block a call that cannot get its slot within `patience` seconds raises
    SlotLater instead of waiting (None: wait, up to the limiter's max_wait)."""
    token = _PATIENCE.set(patience)
    try:
        yield
    finally:
        _PATIENCE.reset(token)


@dataclass(frozen=True)
class Limit:
    """At most `burst` calls in any `burst / rate` seconds (`rate` per second on average), the
    window lengthened by `margin` (0.1: 7 calls in any 1.1 s)."""

    rate: float
    burst: float
    margin: float = 0.0

    @property
    def allowed(self) -> int:
        return max(1, math.floor(self.burst))

    @property
    def window_ms(self) -> int:
        return max(1, math.ceil(round(1000 * self.allowed * (1 + self.margin) / self.rate, 6)))  # 1100.0000000000002 is 1100


class RateLimiter:
    """Blocks the caller until its window has room; every process shares the windows."""

    poll = 0.1   # seconds between looks while a held slot may be released early

    def __init__(self, store: Redis, prefix: str, *, max_wait: float = 120.0):
        self.store, self.prefix, self.max_wait = store, prefix, max_wait
        self._script = store.register_script(SLIDING_WINDOW)
        self._release = store.register_script(RELEASE)

    def wait_time(self, bucket: str, limit: Limit, *more: tuple[str, Limit], hold: float = 0.0,
                  member: str | None = None) -> float:
        """Take a slot in every bucket named (0.0: the call is counted in each), or in none and say
        how long until all have room. One script call, however many buckets. `hold`: the call is
        logged `hold` seconds ahead until `release`d (see the module's docstring)."""
        return self._look(((bucket, limit), *more), hold, member or uuid.uuid4().hex)[0]

    def _look(self, buckets: tuple[tuple[str, Limit], ...], hold: float, member: str) -> tuple[float, bool]:
        """(seconds until every bucket has room, whether that wait is certain); (0.0, True): taken."""
        args: list[object] = [member, max(0, math.ceil(1000 * hold))]
        for _, each in buckets:
            args += (each.allowed, each.window_ms)
        waited_ms, certain = self._script(keys=self._keys(buckets), args=args)
        return int(waited_ms) / 1000.0, bool(int(certain))

    def acquire(self, bucket: str, limit: Limit, *more: tuple[str, Limit],
                hold: float = 0.0) -> Callable[[], None] | None:
        """Block until every bucket named has room, then take one slot in each at once. With `hold`
        (seconds the call may take to reach the vendor), the answer is a function to call once the
        call has been answered (or has failed), which logs it at that moment."""
        buckets = ((bucket, limit), *more)
        member = uuid.uuid4().hex
        start = time.monotonic()
        deadline = start + self.max_wait
        patience = _PATIENCE.get()
        while True:
            wait, certain = self._look(buckets, hold, member)
            if wait <= 0:
                return self._releaser(buckets, member) if hold > 0 else None
            now = time.monotonic()
            # the slot comes after the patience: certainly (defer now), or perhaps (a call in flight may
            # be answered sooner: defer once the patience has been spent looking)
            if patience is not None and now + wait > start + patience and (
                    certain or now + self.poll > start + patience):
                names = ", ".join(name for name, _ in buckets)
                raise SlotLater(f"rate limit {names}: no slot for {wait:.1f} s; the job goes on later",
                                retry_after=wait, certain=certain)
            # a held slot is counted as arriving late until its answer comes, so the wait may end
            # early: look again every `poll` seconds, and give up only when the time is out
            if wait > self.max_wait or time.monotonic() + min(wait, self.poll) > deadline:
                names = ", ".join(name for name, _ in buckets)
                raise RetryableApiError(f"rate limit {names}: no slot within {self.max_wait:.0f} s",
                                        retry_after=wait)
            metrics.rate_limit_waited(bucket, min(wait, self.poll))
            time.sleep(min(wait, self.poll))

    def _keys(self, buckets: tuple[tuple[str, Limit], ...]) -> list[str]:
        return [f"{self.prefix}rate:{name}" for name, _ in buckets]

    def _releaser(self, buckets: tuple[tuple[str, Limit], ...], member: str) -> Callable[[], None]:
        keys, windows = self._keys(buckets), [each.window_ms for _, each in buckets]

        def release() -> None:
            """The call was answered: log it now. Without Redis the slot stays logged ahead, until
            it leaves the window by itself (a little throughput lost, never the limit)."""
            try:
                self._release(keys=keys, args=[member, *windows])
            except RedisError as exc:
                log.warning("rate limit %s: slot not released (%s)", ", ".join(n for n, _ in buckets), exc)
        return release


# --- a connection's limits, from connections.yaml (config/connections.py checks them) ---------------

def configured(options: Mapping[str, Any], key: str, default: tuple[float, float]) -> Limit:
    """The limit `options.rate_limit.<key>` gives ({per_second | per_minute, burst}; "own" is the
    connection's own: also `options.rate_per_second` / `options.burst`), else `default`, with the
    connection's margin (`options.rate_limit.margin`, default 10 %)."""
    spec = dict(options.get("rate_limit") or {})
    margin = float(spec.get("margin", DEFAULT_MARGIN))
    rate, burst = default
    if key == "own":
        found = {k: spec[k] for k in ("per_second", "per_minute", "burst") if k in spec}
        if "rate_per_second" in options:
            found.setdefault("per_second", options["rate_per_second"])
        if "burst" in options:
            found.setdefault("burst", options["burst"])
    else:
        found = dict(spec.get(key) or {})
    if "per_second" in found:
        rate = float(found["per_second"])
        burst = float(found.get("burst", rate))
    elif "per_minute" in found:
        rate = float(found["per_minute"]) / 60
        burst = float(found.get("burst", found["per_minute"]))
    elif "burst" in found:
        burst = float(found["burst"])
    return Limit(rate, burst, margin)


def limiter_for(store: Redis, prefix: str, conn: Any, client: Any) -> Callable[..., Callable[[], None] | None]:
    """The connection's shared limiter: `acquire(also=(("chat:…", (rate, burst)), …), hold=seconds)`
    takes one slot of the connection's limit and one of each scope in `also` (a Telegram chat's, a
    group's, whose limits the connection may set: `rate_limit.per_chat`, `.per_group`), all at once
    in one round trip, or waits until all have room. With `hold` it answers the release function."""
    own = configured(conn.options, "own", (float(client.rate_per_second), float(client.burst or client.rate_per_second)))
    limiter = RateLimiter(store, prefix)

    def acquire(scope: str | None = None, scoped: tuple[float, float] | None = None,
                also: tuple[tuple[str, tuple[float, float]], ...] = (), hold: float = 0.0) -> Callable[[], None] | None:
        main = Limit(*scoped, own.margin) if scoped else own
        more = tuple((f"{conn.name}:{name}", _scoped_limit(conn.options, name, rate, own.margin))
                     for name, rate in also)
        return limiter.acquire(f"{conn.name}:{scope}" if scope else conn.name, main, *more, hold=hold)
    return acquire


def _scoped_limit(options: Mapping[str, Any], name: str, default: tuple[float, float], margin: float) -> Limit:
    """A chat's or a group's limit ("chat:…", "group:…"): `rate_limit.per_chat` / `.per_group`."""
    key = {"chat": "per_chat", "group": "per_group"}.get(name.split(":", 1)[0])
    found = configured(options, key, default) if key else Limit(*default)
    return Limit(found.rate, found.burst, margin)
