"""What an operator does by hand to a pending timer, from cli.py or the console: fire it now or
cancel it, each audited as an operator's with where it was done."""
from __future__ import annotations

from typing import Any

from connectors.base import Event
from pipeline import clock
from pipeline.audit import audit


def fire_timer_now(rt: Any, timer_id: str, where: str) -> dict[str, Any] | None:
    """Make a pending timer due now (a worker runs it; its guard is checked as at its own time).
    The timer as it was, or None when no such timer is pending."""
    timer = rt.backend.timers.get(timer_id)
    if timer is None:
        return None
    now = clock.now().isoformat()
    rt.backend.schedule({**timer, "fire_at": now})
    audit(rt, Event.from_dict(timer["event"]), "timer.moved", timer=timer_id, fire_at=now,
          reason=f"fired now by an operator ({where})")
    return timer


def cancel_timer(rt: Any, timer_id: str, where: str) -> dict[str, Any] | None:
    """Cancel a pending timer. The timer as it was, or None when no such timer is pending."""
    timer = rt.backend.timers.get(timer_id)
    if timer is None:
        return None
    rt.backend.cancel(timer_id)
    audit(rt, Event.from_dict(timer["event"]), "timer.cancelled", timer=timer_id,
          reason=f"cancelled by an operator ({where})")
    return timer
