"""A connection at its vendor's limit waits in a lane of its own, not in front of everyone else.

Every event waits in one RQ queue. When a connection's backlog outruns its vendor's limit (amoCRM:
7 requests/s; a manager moved 2,000 deals at once), the queue would hold its 2,000 events in front
of every other connection's, and a worker sleeping for that connection's slots would hold up the
rest. So each CRM connection has a lane: a time kept in Redis (`lane:<connection>`, Redis's clock,
ms) up to which its events have places, one every `spacing` ms (the connection's limit's time per
call; ratelimit.pace).

- Intake (rqintake.py, in the script that queues the event) gives each event the next place. A
  place within the limit's window of now (the burst the limit allows) is taken at once: the job
  goes on the queue. A later one puts the job on RQ's schedule for that second instead
  (ScheduledJobRegistry; RQ's scheduler queues it then), so the queue only ever holds what the
  limit can serve about now, and another connection's event waits behind a handful of jobs.
  Only while an RQ scheduler runs for the queue (its lock is there: every `worker.py` runs one):
  else nothing would queue a job put on the schedule (a test's burst worker), and events are
  queued at once as before.
- A worker never sleeps for a slot more than ratelimit.BUSY_WAIT while other jobs wait
  (ratelimit.deferring's `others_waiting`): the job is deferred (pipeline/resume.py) to the
  lane's next place (`reserve`), not to the moment the slot frees, so deferred events come back
  one by one and not all at once to fight for the same slot.

An event needs more than one call (a read and a task): a lane paced per call lets events in
faster than they are done, and the surplus is deferred to the lane's end by the worker; the
vendor's limit itself (ratelimit.py) is never exceeded either way.
"""
from __future__ import annotations

from typing import Any

from ratelimit import SlotLater

# KEYS[1] the lane; ARGV[1] ms until the limit has room at the earliest, ARGV[2] the spacing (ms).
# The lane's next place: its end plus the spacing, not before the room; answers the ms until it.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = math.max(now + tonumber(ARGV[1]), tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], at, 'PX', at - now + 60000)
return at - now
"""


def key(rt: Any, connection: str) -> str:
    return rt.keys("lane", connection)


def reserve(rt: Any, exc: SlotLater) -> float | None:
    """Seconds until the event's place in the lane of the limit that had no slot (a connection's
    own limit), or None if it names no lane (a chat's wait within a bot's: the wait itself)."""
    if exc.bucket is None or not exc.spacing:
        return None
    script = rt.store.register_script(RESERVE)
    ms = int(script(keys=[key(rt, exc.bucket)],
                    args=[max(0, int(1000 * float(exc.retry_after or 0))), max(1, round(1000 * exc.spacing))]))
    return ms / 1000.0
