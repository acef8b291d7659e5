"""Steps and jobs that gave up, kept with their event and error until a person replays or
discards them, or until `settings.dead_letter_ttl` (30 days) has passed.

A replay runs the event again and skips the steps it did before by their done marks, which are
kept `settings.done_ttl` (2 days). A dead letter older than that has outlived them: replaying it
could do again what its event did, so `replay` refuses it unless told to go on (`force`).

Entries live in one hash (`dead`, by key) with their times in a sorted set (`dead-index`): a
hash field cannot expire by itself, so entries older than the TTL are dropped whenever a dead
letter is written or listed. A failed timer's data goes with it: it leaves the timer index.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

import metrics
from pipeline import clock

log = logging.getLogger("crmbridge.worker")


def dead_letter(rt: Any, job_name: str, payload: dict[str, Any], error: str, key: str | None = None) -> str:
    """Keep a job (or one step of it) that gave up, with its event and error, for a replay."""
    key = key or payload.get("timer_id") or payload.get("id") or "unknown"
    entry = {"job": job_name, "payload": payload, "error": error[-2000:], "at": clock.now().isoformat()}
    with rt.store.pipeline() as pipe:
        pipe.hset(rt.keys("dead"), key, json.dumps(entry, ensure_ascii=False, default=str))
        pipe.zadd(rt.keys("dead-index"), {key: time.time()})
        pipe.execute()
    metrics.dead_lettered(job_name)
    log.error("dead letter %s (%s): %s", key, job_name, error.splitlines()[-1] if error else "")
    expire(rt)
    return key


def give_up(rt: Any, name: str, payload: dict[str, Any], error: str) -> None:
    """A job that will not be retried: dead-letter it, and let its record's next event go (a
    timer's: it leaves the timer index, its data kept in the dead letter)."""
    if name == "worker.fire_timer" and "event" not in payload:  # the dead letter keeps the whole timer
        payload = rt.backend.timers.get(payload["timer_id"]) or payload
    dead_letter(rt, name, payload, error)
    if name == "worker.handle_event":
        rt.backend.order.done(payload)
    elif name == "worker.fire_timer":
        rt.backend.timers.remove(payload["timer_id"])


def entries(rt: Any) -> dict[str, dict[str, Any]]:
    """Every dead letter still kept, by key."""
    expire(rt)
    return {k.decode(): json.loads(v) for k, v in sorted(rt.store.hgetall(rt.keys("dead")).items())}


def get(rt: Any, key: str) -> dict[str, Any] | None:
    raw = rt.store.hget(rt.keys("dead"), key)
    return json.loads(raw) if raw else None


class MarksGone(Exception):
    """The dead letter is older than its event's done marks: a replay could repeat done steps."""


def outlived(rt: Any, entry: dict[str, Any]) -> str | None:
    """Why replaying this entry could repeat steps its event did (it is older than the done
    marks), or None."""
    age = (clock.now() - datetime.fromisoformat(entry["at"])).total_seconds()
    if age <= rt.settings.done_ttl:
        return None
    return (f"it is {age / 86400:.1f} days old and the steps its event did are remembered "
            f"{rt.settings.done_ttl / 86400:g} days (CRMBRIDGE_DONE_TTL): a replay could do them again; "
            "check the vendor, then replay it anyway")


def replay(rt: Any, key: str, force: bool = False) -> bool:
    """Put a dead letter back on the queue (completed steps are still skipped); MarksGone if it
    has outlived its event's done marks and `force` is not given."""
    entry = get(rt, key)
    if entry is None:
        return False
    reason = None if force else outlived(rt, entry)
    if reason:
        raise MarksGone(f"dead letter {key}: {reason}")
    if entry["job"].endswith("fire_timer"):
        rt.backend.schedule({**entry["payload"], "fire_at": clock.now().isoformat()})
    else:
        rt.backend.enqueue_event(entry["payload"])
    # a step dead-lettered as "may have been sent" keeps its attempted mark until someone decides:
    # replaying it is that decision
    rt.store.delete(rt.keys("attempted", key))
    _drop(rt, key)
    return True


def discard(rt: Any, key: str) -> bool:
    """Drop a dead letter without running it (the vendor had it, or it is no longer wanted); its
    attempted mark goes too, so nothing is left waiting for a decision."""
    if not rt.store.hexists(rt.keys("dead"), key):
        return False
    rt.store.delete(rt.keys("attempted", key))
    _drop(rt, key)
    return True


def expire(rt: Any) -> int:
    """Drop the dead letters older than the TTL; how many."""
    index = rt.keys("dead-index")
    old = rt.store.zrangebyscore(index, "-inf", time.time() - rt.settings.dead_letter_ttl)
    if old:
        with rt.store.pipeline() as pipe:
            pipe.hdel(rt.keys("dead"), *old)
            pipe.zrem(index, *old)
            pipe.delete(*(rt.keys("attempted", k.decode()) for k in old))
            pipe.execute()
    return len(old)


def _drop(rt: Any, key: str) -> None:
    with rt.store.pipeline() as pipe:
        pipe.hdel(rt.keys("dead"), key)
        pipe.zrem(rt.keys("dead-index"), key)
        pipe.execute()
