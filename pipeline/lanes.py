"""A connection at its vendor's limit queues its events in a lane, not in front of everyone else.

Every event waits in one RQ queue. When a connection's backlog outruns its vendor's limit (amoCRM:
7 requests/s; a manager moved 2,000 deals), a worker that sleeps for that connection's slots
keeps every other connection's events waiting behind it. So a job never sleeps for a slot more
than ratelimit.BUSY_WAIT while other jobs wait (ratelimit.deferring's `others_waiting`), and a
deferral on a rate limit (pipeline/resume.py) takes the next place in the limit's lane: a time,
kept in Redis (`lane:<bucket>`), that moves on by `spacing` (the limit's seconds per call ×
LANE_CALLS, the calls an event makes) with each event deferred into it. The deferred events come
back one by one when their place comes, not all at once to fight for the same slot, and between
them the queue holds only what is due: another connection's event waits behind a handful of
jobs, not behind the backlog.

An event of a connection whose lane runs ahead of now (more than LANE_AHEAD) does not jump it: it
is deferred to the lane's end before it makes any call (`wait_in_lane`), so the connection's
events keep the order they came in and the slots kept for the deferred ones stay theirs. An event
that comes back at its place (`lane_due` in its payload) goes on.
"""
from __future__ import annotations

import time
from typing import Any

from ratelimit import SlotLater

LANE_CALLS = 2        # vendor calls an event makes (a read and an action): a lane's place per event
LANE_AHEAD = 0.5      # seconds a connection's lane may run ahead of now before its new events join it
EARLY = 0.05          # seconds before its place an event that came back may go on (the scheduler's rounding)

# KEYS[1] the lane; ARGV[1] milliseconds until the limit has room at the earliest, ARGV[2] the lane's
# spacing (ms). The lane's next place: its end plus the spacing, not before the room; kept with the
# spacing ("at:spacing", Redis's clock) a minute beyond it. Answers the milliseconds until that place.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local spacing = tonumber(ARGV[2])
local lane = tonumber(string.match(redis.call('GET', KEYS[1]) or '0', '^[^:]+'))
local at = math.max(now + tonumber(ARGV[1]), lane + spacing)
redis.call('SET', KEYS[1], at .. ':' .. spacing, 'PX', at - now + 60000)
return at - now
"""


def key(rt: Any, bucket: str) -> str:
    return rt.keys("lane", bucket)


def reserve(rt: Any, payload: dict[str, Any], exc: SlotLater) -> float | None:
    """The event's place in the lane of the limit that had no slot: seconds until it (and noted in
    the event as `lane_due`), or None if the exception names no lane (the wait is the limit's)."""
    if exc.bucket is None or not exc.spacing:
        return None
    script = rt.store.register_script(RESERVE)
    ms = int(script(keys=[key(rt, exc.bucket)],
                    args=[max(0, int(1000 * float(exc.retry_after or 0))), max(1, round(1000 * exc.spacing * LANE_CALLS))]))
    payload["lane_due"] = time.time() + ms / 1000.0
    return ms / 1000.0


def wait_in_lane(rt: Any, payload: dict[str, Any], lane: bytes | None) -> SlotLater | None:
    """Before the event's first call: a SlotLater to defer it with (its place in its connection's
    lane, or the rest of the wait for the place it has), or None to go on now. `lane`: the value of
    the connection's lane key, read with the turn's check."""
    now = time.time()
    due = payload.get("lane_due")
    if due is not None:   # it has a place: go on once it comes
        if now >= float(due) - EARLY:
            payload.pop("lane_due", None)
            return None
        return SlotLater(f"lane {payload['connection']}: its place comes in {float(due) - now:.1f} s",
                         retry_after=float(due) - now, certain=True)
    if not lane:
        return None
    at, _, spacing = lane.decode().partition(":")
    if float(at) / 1000.0 - now <= LANE_AHEAD:
        return None
    # the spacing kept is per event already: the SlotLater's spacing is per call
    return SlotLater(f"lane {payload['connection']}: {float(at) / 1000.0 - now:.1f} s of events before this one",
                     retry_after=0.0, certain=True, bucket=payload["connection"],
                     spacing=float(spacing or 0) / 1000.0 / LANE_CALLS)
