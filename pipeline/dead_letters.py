"""Steps and jobs that gave up, kept with their event and error until a person replays them."""
from __future__ import annotations

import json
import logging
from typing import Any

from pipeline import clock

log = logging.getLogger("crmbridge.worker")


def dead_letter(rt: Any, job_name: str, payload: dict[str, Any], error: str, key: str | None = None) -> str:
    """Keep a job (or one step of it) that gave up, with its event and error, for a replay."""
    key = key or payload.get("timer_id") or payload.get("id") or "unknown"
    entry = {"job": job_name, "payload": payload, "error": error[-2000:], "at": clock.now().isoformat()}
    rt.store.hset(rt.keys("dead"), key, json.dumps(entry, ensure_ascii=False, default=str))
    log.error("dead letter %s (%s): %s", key, job_name, error.splitlines()[-1] if error else "")
    return key


def give_up(rt: Any, name: str, payload: dict[str, Any], error: str) -> None:
    """A job that will not be retried: dead-letter it, and let its record's next event go."""
    if name == "worker.fire_timer" and "event" not in payload:  # the dead letter keeps the whole timer
        payload = rt.backend.timers.get(payload["timer_id"]) or payload
    dead_letter(rt, name, payload, error)
    if name == "worker.handle_event":
        rt.backend.order.done(payload)


def replay(rt: Any, key: str) -> bool:
    """Put a dead letter back on the queue (completed steps are still skipped)."""
    raw = rt.store.hget(rt.keys("dead"), key)
    if raw is None:
        return False
    entry = json.loads(raw)
    if entry["job"].endswith("fire_timer"):
        rt.backend.schedule({**entry["payload"], "fire_at": clock.now().isoformat()})
    else:
        rt.backend.enqueue_event(entry["payload"])
    # a step dead-lettered as "may have been sent" keeps its attempted mark until someone decides:
    # replaying it is that decision
    rt.store.delete(rt.keys("attempted", key))
    rt.store.hdel(rt.keys("dead"), key)
    return True
