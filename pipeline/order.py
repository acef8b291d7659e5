"""Per-record order: an event waits until its record's earlier events are done.

Intake numbers the events of each record (queueing.Order); a worker handles number n once n-1
is done. An event that is not yet its turn is deferred: queued again a little later (after a
poll of a quarter second, the time a predecessor being handled right now usually takes), so the
worker goes on with other records' events and only this record waits. An event whose
predecessor is missing or stuck goes on after `settings.order_gap_timeout` seconds (60 by
default), and the audit says so (`order.gap_skipped`), unless that predecessor is deferred on a
rate limit (pipeline/resume.py holds its turn): then the record's later events wait for it.

A copy of an event that a deferral superseded (see queueing.RQBackend.defer_event) is never its
turn: it does nothing (`Turn.superseded`), the deferred copy handles the event.
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
    superseded: bool = False
    kept: bytes | None = None    # the progress an earlier run of this event kept (pipeline/resume.py)


def take_turn(rt: Any, payload: dict[str, Any]) -> Turn:
    """Wait (briefly) for the record's earlier events; defer this one if they are not done. The
    record's stage marks come with the turn's check when the first look finds it the turn (one
    round trip less); read on a later look, an earlier event may have written them since."""
    keys = stages.mark_keys(rt, payload)
    # the progress an earlier run kept (a worker killed mid-event), read in the same round trip
    progress = None if "resume" in payload else rt.keys("progress", payload["id"])
    deadline = time.monotonic() + ORDER_POLL
    ready, values = rt.backend.order.is_turn(payload, [*keys, *([progress] if progress else [])])
    while not ready:
        if payload.pop("superseded", False):   # a later copy of this event was queued: it does the work
            return Turn(False, superseded=True)
        if time.monotonic() >= deadline:
            return Turn(go_on_without(rt, payload))
        time.sleep(0.02)
        ready, values = rt.backend.order.is_turn(payload)
    payload.pop("superseded", None)
    if values is None:   # a later look: the progress is read now (the marks when needed)
        return Turn(True, kept=rt.store.get(progress) if progress else None)
    return Turn(True, stages.Marks(*values[:2]) if keys else None, kept=values[-1] if progress else None)


def go_on_without(rt: Any, payload: dict[str, Any]) -> bool:
    """The record's earlier event is not done: True if it has been missing too long (go on, and
    say so), else defer this event (queued again a little later) and False."""
    first = payload.setdefault("waiting_since", time.time())
    waited = time.time() - first
    if waited > rt.settings.order_gap_timeout and not rt.backend.order.held(payload):  # missing or stuck: go on
        audit(rt, Event.from_dict(payload), "order.gap_skipped", seq=payload.get("seq"),
              waited=round(waited, 1), reason="an earlier event of this record was not done in time")
        return True
    payload["defers"] = payload.get("defers", 0) + 1
    rt.backend.defer_event(payload, min(DEFER_MAX, float(payload["defers"])))
    return False


def done(rt: Any, payload: dict[str, Any]) -> None:
    """The event is handled: its record's next event may go. Inside a job, written with the
    job's audit entries when it ends well (one round trip); else now."""
    if not after_success(rt, payload):
        rt.backend.order.done(payload)
