"""The catch-up: what the platforms' lost webhooks would have said, asked of the CRM itself.

Each change the CRM lists (`changed_since`, one `Changed` shape for every CRM) becomes an
`entity.updated` event whose id is the record and its modification time, put through the
webhooks' own intake: a change seen before is a duplicate. The worker then compares the record
with its last snapshot, so the stage and field changes a lost webhook would have carried are
derived, and changes already handled derive nothing.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from connectors.base import Entity, Event, event_id
from pipeline import clock
from rules.calendar import parse_duration

log = logging.getLogger("crmbridge.worker")

UNIT_SECONDS = {"minutes": 60, "hours": 3600, "days": 86400, "weeks": 7 * 86400}
JOB = "worker.catch_up"


def every(rt: Any, name: str) -> float | None:
    """Seconds between catch-ups of a connection (`options: {catch_up: {every: 10 minutes}}`)."""
    spec = rt.connections.connections[name].options.get("catch_up")
    if not spec:
        return None
    period = parse_duration(str(spec.get("every", "10 minutes") if isinstance(spec, dict) else spec))
    return period.amount * UNIT_SECONDS[period.unit]


def ensure(rt: Any) -> list[str]:
    """Plan the next catch-up of every connection that has one (one job per slot and connection)."""
    planned = []
    for name in rt.connections.connections:
        seconds = every(rt, name)
        if seconds and rt.client(name).can("changed_since"):
            slot = int(clock.now().timestamp() // seconds) + 1
            rt.backend.call_at(datetime.fromtimestamp(slot * seconds, timezone.utc), JOB, name, f"catch-up:{name}:{slot}")
            planned.append(name)
    return planned


def look(rt: Any, name: str) -> dict[str, int]:
    """Ask the CRM what changed since the last look and queue each change as an event. The next
    look is planned whatever happens to this one: a look that fails (a 429, a 5xx) is retried by
    RQ with backoff, and the schedule never stops."""
    try:
        return _look(rt, name)
    finally:
        ensure(rt)


def _look(rt: Any, name: str) -> dict[str, int]:
    client, now = rt.client(name), clock.now()
    mark = rt.keys("catch-up", name)
    since = (rt.store.get(mark) or b"").decode() or (now - timedelta(seconds=every(rt, name) or 600)).isoformat()
    accepted = seen = 0
    for item in client.changed_since(since) or []:
        event = Event(id=event_id(name, "catch-up", item.type, item.id, item.modified), connection=name,
                      source=rt.connections.connections[name].type, kind="entity.updated",
                      entity=Entity(item.type, str(item.id)), data={"needs_snapshot_diff": True, "via": "catch-up"},
                      raw=item.raw, occurred_at=now.isoformat())
        if rt.backend.accept(event.to_dict(), rt.keys("seen", event.id), rt.settings.dedupe_ttl):
            accepted += 1
        else:
            seen += 1
    rt.store.set(mark, (now - timedelta(seconds=60)).isoformat())  # overlap a minute: clocks differ
    log.info("catch-up %s since %s: %d new, %d already seen", name, since, accepted, seen)
    return {"accepted": accepted, "seen": seen}

