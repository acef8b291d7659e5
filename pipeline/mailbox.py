"""The mailboxes the worker reads: each `imap` connection polled on its own schedule.

Each poll asks the connection's client for the messages after the last UID read
(connectors/intake/imap.py `read_new`) and puts each through the webhooks' own intake (a message
seen before is a duplicate). Where it stopped is kept in Redis, `mailbox:<name>` = {uidvalidity,
last_uid, polled_at}, moved on after each message is queued: a worker killed mid-poll reads the
rest at the next poll, and a message queued but not yet marked is a duplicate there, not a second
lead. Like the catch-up (pipeline/catch_up.py), a poll is an RQ job planned per slot, one per
slot and connection however many workers start; the next is planned whatever happens to this one.
The in-process default (no REDIS_URL) runs no periodic jobs.

    options: {every: 1 minute}      # default 1 minute
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from pipeline import clock
from rules.calendar import parse_duration

log = logging.getLogger("crmbridge.worker")

UNIT_SECONDS = {"minutes": 60, "hours": 3600, "days": 86400, "weeks": 7 * 86400}
JOB = "pipeline.mailbox.poll_job"
TYPE = "imap"
_runtime: Any = None   # the worker's runtime, for the job RQ calls by name (set by ensure)


def mailboxes(rt: Any) -> list[str]:
    return [name for name, conn in rt.connections.connections.items() if conn.type == TYPE]


def every(rt: Any, name: str) -> float:
    """Seconds between polls (`options: {every: 1 minute}`)."""
    period = parse_duration(str(rt.connections.connections[name].options.get("every") or "1 minute"))
    return period.amount * UNIT_SECONDS[period.unit]


def ensure(rt: Any) -> list[str]:
    """Plan the next poll of every mailbox (at worker start, and after each poll)."""
    global _runtime
    _runtime = rt
    planned = []
    for name in mailboxes(rt):
        seconds = every(rt, name)
        slot = int(clock.now().timestamp() // seconds) + 1
        rt.backend.call_at(datetime.fromtimestamp(slot * seconds, timezone.utc), JOB, name, f"mailbox:{name}:{slot}")
        planned.append(name)
    return planned


def poll_job(name: str) -> dict[str, int]:
    """The RQ job: poll with the worker's runtime, then plan the next poll."""
    if _runtime is None:
        raise RuntimeError("the mailbox poll runs in a worker that called pipeline.mailbox.ensure at start")
    try:
        return poll(_runtime, name)
    finally:
        ensure(_runtime)


def poll(rt: Any, name: str) -> dict[str, int]:
    """Read the mailbox's new messages and queue each as an event; move the mark after each."""
    mark = rt.keys("mailbox", name)
    state = {k.decode(): v.decode() for k, v in (rt.store.hgetall(mark) or {}).items()}
    validity = int(state["uidvalidity"]) if state.get("uidvalidity") else None
    last_uid = int(state.get("last_uid") or 0)
    polled = datetime.fromisoformat(state["polled_at"]) if state.get("polled_at") else None
    now = clock.now()
    found_validity, upto, messages = rt.client(name).read_new(validity, last_uid, since=polled)
    accepted = seen = 0
    for uid, event in messages:
        if rt.backend.accept(event.to_dict(), rt.keys("seen", event.id), rt.settings.dedupe_ttl):
            accepted += 1
        else:
            seen += 1
        rt.store.hset(mark, mapping={"uidvalidity": found_validity, "last_uid": uid})
    if validity is not None and found_validity != validity:
        log.warning("mailbox %s: UIDVALIDITY changed %s → %s; messages since %s read again by Message-ID",
                    name, validity, found_validity, polled)
    rt.store.hset(mark, mapping={"uidvalidity": found_validity, "last_uid": upto, "polled_at": now.isoformat()})
    log.info("mailbox %s: %d new, %d already seen, last UID %s", name, accepted, seen, upto)
    return {"accepted": accepted, "seen": seen, "last_uid": upto}
