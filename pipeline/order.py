"""Per-record order: an event waits until its record's earlier events are done.

Intake numbers the events of each record (queueing.Order); a worker handles number n once n-1
is done. An event that is not yet its turn is deferred: queued again a little later (after a
poll of a quarter second, the time a predecessor being handled right now usually takes), so the
worker goes on with other records' events and only this record waits. An event whose
predecessor is missing or stuck goes on after `settings.order_gap_timeout` seconds (60 by
default), and the audit says so (`order.gap_skipped`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from connectors.base import Event
from pipeline import stages
from pipeline.audit import after_success, audit

ORDER_POLL = 0.25         # seconds a worker polls for an earlier event of the same record…
DEFER_MAX = 5.0           # …then the event is queued again after 1, 2, … up to this many seconds


@dataclass(frozen=True)
class Turn:
    """The outcome of waiting: `ready` (else the event was deferred), and the record's stage marks
    if they were read with the turn's check and are still current (None: read them when needed)."""
    ready: bool
    marks: stages.Marks | None = None


def take_turn(rt: Any, payload: dict[str, Any]) -> Turn:
    """Wait (briefly) for the record's earlier events; defer this one if they are not done."""
    keys = stages.mark_keys(rt, payload)
    values = dict.fromkeys(keys)   # read with the turn's first check: one round trip less
    ready = wait_for_turn(rt, payload, values)
    # (emptied unless read on the look that found it the turn: an earlier event may have written them)
    return Turn(ready, stages.Marks(values[keys[0]], values[keys[1]]) if ready and keys and values else None)


def wait_for_turn(rt: Any, payload: dict[str, Any], also: dict[str, bytes | None] | None = None) -> bool:
    """True once the record's earlier events are done; else defer this one and return False.
    `also`: keys to read with the first look (Order.is_turn)."""
    deadline = time.monotonic() + ORDER_POLL
    while not rt.backend.order.is_turn(payload, also):
        if also:   # read before the earlier event (which may write them) was done: read again later
            also.clear()
        if time.monotonic() >= deadline:
            first = payload.setdefault("waiting_since", time.time())
            waited = time.time() - first
            if waited > rt.settings.order_gap_timeout:  # an earlier event is missing or stuck: go on
                audit(rt, Event.from_dict(payload), "order.gap_skipped", seq=payload.get("seq"),
                      waited=round(waited, 1), reason="an earlier event of this record was not done in time")
                return True
            payload["defers"] = payload.get("defers", 0) + 1
            rt.backend.defer_event(payload, min(DEFER_MAX, float(payload["defers"])))
            return False
        time.sleep(0.02)
    return True


def done(rt: Any, payload: dict[str, Any]) -> None:
    """The event is handled: its record's next event may go. Inside a job, written with the
    job's audit entries when it ends well (one round trip); else now."""
    if not after_success(rt, payload):
        rt.backend.order.done(payload)
