"""Timers: set and cancelled by a plan, fired when due (still current, guard re-checked by the
planner on fresh data), rescheduled when they repeat, polled into the queue by every worker."""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

import metrics
from connectors.base import Event
from pipeline import clock
from pipeline.audit import audit
from queueing import TimerIndex
from rules.engine import Plan, schedule_timer

log = logging.getLogger("crmbridge.worker")

POLL = 0.2  # seconds between two looks for due timers (RQ's own scheduler looks once a second)


def as_dict(timer: Any) -> dict[str, Any]:
    return dict(timer.__dict__)


def apply(rt: Any, event: Event, result: Plan) -> None:
    """Cancel and set the timers a plan asks for. A rule with `restart: false` sets its timer only
    when none of that id is pending: a later event (the client's second message) leaves the first
    one's timer where it is, so the delay counts from the first (playbook B4). Per-record order
    (pipeline/order.py) makes the look and the set one step for the record."""
    for timer_id, reason in result.cancels:
        if rt.backend.cancel(timer_id):
            audit(rt, event, "timer.cancelled", timer=timer_id, reason=reason)
    for timer in result.timers:
        if not timer.restart:
            pending = rt.backend.timers.get(timer.timer_id)
            if pending is not None:
                audit(rt, event, "timer.kept", timer=timer.timer_id, rule=timer.rule, fire_at=pending["fire_at"],
                      reason="restart: false; a timer of this rule and record is pending")
                continue
        rt.backend.schedule(as_dict(timer))
        audit(rt, event, "timer.set", timer=timer.timer_id, rule=timer.rule, fire_at=timer.fire_at)


def current(rt: Any, job: dict[str, Any]) -> dict[str, Any] | None:
    """The timer a job fires, if it is still the current one (not moved, replaced or cancelled
    since it was queued); None otherwise. A job carries only the timer's id and time."""
    now = rt.backend.timers.get(job["timer_id"])
    timer = job
    if "event" not in job:  # an RQ job carries only the timer's id and time: the index has the rest
        if now is None or not TimerIndex.is_time_of(now, job["at"]):
            log.info("timer %s: stale (moved or cancelled since it was queued)", job["timer_id"])
            return None
        timer = now
    if now is None or now["fire_at"] != timer["fire_at"]:
        # replaced, moved or cancelled since this job was scheduled (or fired twice by two schedulers)
        audit(rt, Event.from_dict(timer["event"]), "timer.stale", timer=timer["timer_id"])
        return None
    metrics.timer_fired(timer["fire_at"])
    return timer


def fired_event(timer: dict[str, Any]) -> Event:
    """The timer's event, with an id of its own firing (its steps' idempotency keys)."""
    event = Event.from_dict(timer["event"])
    return Event(**{**event.__dict__, "id": f"{event.id}|{timer['timer_id']}@{timer['fire_at']}"})


def reschedule(rt: Any, timer: dict[str, Any], result: Plan) -> None:
    """A fired timer is gone, unless it repeats (its next firing replaces it)."""
    if not result.timers:
        rt.backend.timers.remove(timer["timer_id"])
    for nxt in result.timers:
        rt.backend.schedule(as_dict(nxt))


def ensure_schedules(rt: Any) -> int:
    """Give every scheduled rule (digests) its next tick, unless it has a current one."""
    count = 0
    for rule in rt.ruleset.rules:
        if not rule.trigger.schedule:
            continue
        timer = as_dict(schedule_timer(rule, rt.ruleset, clock.now()))
        existing = rt.backend.timers.get(timer["timer_id"])
        if existing is None or (existing["fire_at"] != timer["fire_at"]
                                and datetime.fromisoformat(existing["fire_at"]) > clock.now()):
            rt.backend.schedule(timer)
            count += 1
    return count


def start_poll(rt: Any, interval: float = POLL) -> threading.Thread:
    """Queue due timers every `interval` seconds, in a thread of this worker process (any number
    of workers may poll: each timer is queued once, see RQBackend.fire_due_timers)."""
    def poll() -> None:
        while True:
            try:
                rt.backend.fire_due_timers()
            except Exception:  # Redis away for a moment: RQ's worker in this process says so; try again
                log.warning("timer poll failed", exc_info=True)
                time.sleep(1.0)
            time.sleep(interval)
    thread = threading.Thread(target=poll, name="crmbridge-timers", daemon=True)
    thread.start()
    return thread
