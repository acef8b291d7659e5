"""The rate of new leads per source (E1: a spam-like burst on a form, a chat widget, the mailbox).

A door connection may say how many of its events the worker takes on in a time:

    site-tilda:
      type: tilda
      options:
        leads_limit: {per_minute: 10, burst: 10}    # or per_second; burst: default a minute's worth

Every event of that connection takes a slot of the connection's own window (`<connection>:leads`, the
shared sliding window of ratelimit.py, in Redis: every worker counts in it) before anything is read or
made for it. An event with no slot now is not dropped and not waited for in the worker: it goes back to
the queue for when its slot comes (pipeline/resume.py's deferral, the record's later events held behind
it), so a burst of a hundred submissions is a hundred leads, made at the set rate, the rest queued.
The intake accepted each one already (the builder got its 200, the dedupe holds), so nothing is lost
if a worker stops meanwhile: the deferred job is in Redis.

On the embedded default (no REDIS_URL, one thread, nothing durable to defer into) the worker waits
for the slot instead.
"""
from __future__ import annotations

import uuid
from typing import Any

from ratelimit import Limit, RateLimiter, SlotLater

OPTION = "leads_limit"
WAIT_EMBEDDED = 24 * 3600   # seconds the embedded worker may wait for a slot (it has no queue to defer into)


def limit_of(options: dict[str, Any] | None) -> Limit | None:
    """The connection's `leads_limit` as a Limit (no margin: it is our own limit, not a vendor's), or None."""
    spec = (options or {}).get(OPTION)
    if not isinstance(spec, dict) or not spec:
        return None
    if "per_second" in spec:
        rate = float(spec["per_second"])
        burst = float(spec.get("burst", rate))
    else:
        rate = float(spec["per_minute"]) / 60
        burst = float(spec.get("burst", spec["per_minute"]))
    return Limit(rate, burst, 0.0)


def take(rt: Any, payload: dict[str, Any]) -> None:
    """A slot for this event of a limited door, now; else SlotLater (a durable queue: the job is
    deferred) or a wait (the embedded default). Nothing for other connections. Taken once per event:
    a deferred event that got its slot keeps it (`payload["lead_slot"]`) through its later runs."""
    conn = rt.connections.connections.get(payload.get("connection"))
    limit = limit_of(getattr(conn, "options", None)) if conn is not None else None
    if limit is None or payload.get("lead_slot"):
        return
    bucket = f"{conn.name}:leads"
    if getattr(rt.backend, "durable", False):
        limiter = RateLimiter(rt.store, rt.keys.prefix)
        wait = limiter.wait_time(bucket, limit, member=f"{payload.get('id')}:{uuid.uuid4().hex}")
        if wait > 0:
            raise SlotLater(f"new leads from {conn.name}: at most {limit.allowed} in {limit.window_ms / 1000:g} s; "
                            f"this one waits {wait:.1f} s in the queue", retry_after=wait, certain=True)
    else:
        RateLimiter(rt.store, rt.keys.prefix, max_wait=WAIT_EMBEDDED).acquire(bucket, limit)
    payload["lead_slot"] = True
