"""The catch-up: what the platforms' lost webhooks would have said, asked of the CRM itself.

Where the CRM keeps a change history (`stage_history`: amoCRM's events, Bitrix24's stage
history), every stage move since the last look becomes the `stage.changed` event a webhook
would have made, oldest first, with the stage it entered then (`data.via: history`: the rules
see that stage, not the record's stage now): intermediate stages and records never seen before
are acted on, in order, once. A move also reported by a webhook is one move
(stages.moved_already), and a row seen by two looks is one event (its id is the vendor's row).
Then each record the CRM lists as changed (`changed_since`, one `Changed` shape for every CRM)
becomes an `entity.updated` event whose id is the record and its modification time: the worker
compares it with its last snapshot, so field changes (and, for a CRM with no history, the stage)
are derived, and changes already handled derive nothing. Both go through the webhooks' own
intake (per-record order, duplicates dropped); each read is retried in the job with the
vendor's Retry-After.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from connectors.base import Entity, Event, Moved, event_id
from pipeline import clock
from pipeline.retry import with_retries
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
    events = []
    if client.can("stage_history"):   # first: a record's moves come before its update event
        events += [moved(rt, client, name, move, now) for move in with_retries(rt, lambda: client.stage_history(since)) or []]
    source = rt.connections.connections[name].type
    for item in with_retries(rt, lambda: client.changed_since(since)) or []:
        events.append(Event(id=event_id(name, "catch-up", item.type, item.id, item.modified), connection=name,
                            source=source, kind="entity.updated", entity=Entity(item.type, str(item.id)),
                            data={"needs_snapshot_diff": True, "via": "catch-up"}, raw=item.raw,
                            occurred_at=now.isoformat()))
    accepted = seen = 0
    for event in events:
        if rt.backend.accept(event.to_dict(), rt.keys("seen", event.id), rt.settings.dedupe_ttl):
            accepted += 1
        else:
            seen += 1
    rt.store.set(mark, (now - timedelta(seconds=60)).isoformat())  # overlap a minute: clocks differ
    log.info("catch-up %s since %s: %d new, %d already seen", name, since, accepted, seen)
    return {"accepted": accepted, "seen": seen}


def moved(rt: Any, client: Any, name: str, move: Moved, now: datetime) -> Event:
    """A stage move from the CRM's history as the `stage.changed` event a webhook makes: the stage
    entered and left (with the CRM's names), at the time of the move; its id is the vendor's row."""
    data: dict[str, Any] = {"stage": {"id": move.stage}, "via": "history", "history_id": move.ref}
    if move.pipeline:
        data["pipeline"] = {"id": move.pipeline}
    if client.can("name_refs"):
        data = client.name_refs(data)
    if move.previous_stage:   # named as a stage of its own pipeline
        left = {"stage": {"id": move.previous_stage}, **({"pipeline": {"id": move.previous_pipeline}}
                                                         if move.previous_pipeline else {})}
        left = client.name_refs(left) if client.can("name_refs") else left
        data["previous_stage"] = left["stage"]
        if "pipeline" in left:
            data["previous_pipeline"] = left["pipeline"]
    return Event(id=event_id(name, "history", move.type, move.id, move.ref), connection=name,
                 source=rt.connections.connections[name].type, kind="stage.changed",
                 entity=Entity(move.type, str(move.id)), data=data, raw={"history": move.__dict__},
                 occurred_at=move.at)
