"""find_or_create kind: order — the open order (a CRM task) of an inbox conversation, found or
created, and its card kept: the last message, its time, who wrote last, how many client messages
are unanswered (rules/find_or_create.py plans it; playbook B1/B2).

One conversation (umnico's lead: one client on one of the accounts) has at most one open order.
The order is found, in this order: the order this step last used for the conversation (kept in
Redis) while it is not in a closed status; else the CRM's open tasks whose conversation field holds
the conversation (find_tasks: read back before any create, so a run again after a crash finds what
it made instead of making a second order); else, for a client's message, the client's contact is
found or created (find_or_create's own search) and a new order task created for it, with the card
and the conversation in the same request. A manager's message with no open order changes nothing.

The card is computed from the step's own state per order (Redis): the unanswered client messages
are a sorted set of message ids by time, a manager's message removes every one sent before it, so
a message handled twice (a retry, a redelivery) counts once, and a late one never makes the card
older. Built on single calls of the client: get_entity, find_tasks, process_id, create_task,
set_fields, and search_contacts / add_contact for the client.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import LockError

from connectors.base import Entity, PermanentApiError, RetryableApiError
from pipeline import history
from pipeline.steps.find_or_create import run as find_contact
from pipeline.steps.record import store as facts_store
from pipeline.steps.base import StepContext, require
from rules.calendar import WorkingCalendar

METHOD = "find_or_create_order"
REQUIRES = frozenset({"get_entity", "find_tasks", "process_id", "create_task", "set_fields",
                      "search_contacts", "add_contact"})
ONE_CLIENT = True
LOCK_SECONDS = 120
STATE_TTL = 180 * 24 * 3600   # an order's card state and its conversation's order: half a year
CARD_ROLES = ("last_message", "last_message_at", "last_writer", "unanswered")
WRITERS = {"client": "Клієнт", "manager": "Менеджер"}

log = logging.getLogger("crmbridge.steps")


def run(ctx: StepContext, conversation: str, direction: str, message_id: str, at: str, text: str,
        order: dict[str, Any], card: dict[str, str], contact: dict[str, Any] | None = None,
        writers: dict[str, str] | None = None, response: dict[str, Any] | None = None,
        photo: dict[str, Any] | None = None) -> dict[str, Any]:
    """{order, created, contact?, unanswered, last_writer} or {order: None, skipped} for a manager's
    message in a conversation without an open order."""
    require(ctx, METHOD, REQUIRES)
    conversation = str(conversation or "").strip()
    if not conversation:
        raise PermanentApiError("find_or_create order: the message names no conversation")
    if direction not in ("incoming", "outgoing"):
        raise PermanentApiError(f"find_or_create order: direction {direction!r} is neither incoming nor outgoing")
    lock = None
    if not ctx.client.record_only:
        lock = ctx.rt.store.lock(ctx.rt.keys("find-order", ctx.connection, conversation),
                                 timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS / 2)
        if not lock.acquire():
            raise RetryableApiError(f"find_or_create order: another worker holds conversation {conversation}")
    try:
        return _run(ctx, conversation, direction, str(message_id or at), _moment(at), text or "", order, card,
                    contact or {}, {**WRITERS, **(writers or {})}, response, photo)
    finally:
        if lock is not None:
            try:
                lock.release()
            except LockError:
                log.warning("%s: find_or_create order lock had expired", ctx.connection)


def _run(ctx: StepContext, conversation: str, direction: str, message_id: str, at: datetime, text: str,
         order: dict[str, Any], card: dict[str, str], contact: dict[str, Any], writers: dict[str, str],
         response: dict[str, Any] | None = None, photo: dict[str, Any] | None = None) -> dict[str, Any]:
    client = ctx.client
    closed = {str(s).casefold() for s in order.get("closed") or ()}
    current = _current_order(ctx, conversation, order["field"], closed)
    result: dict[str, Any] = {"conversation": conversation, "direction": direction}
    if current is None and direction == "outgoing":
        result.update(order=None, skipped="a manager's message in a conversation with no open order")
        return result
    if current is None:
        # the contact step itself, with its lock per client (two accounts' conversations of one client)
        found = find_contact(ctx, contact["by"], contact["value"], contact.get("name"),
                             dict(contact.get("fields") or {}), contact["field"], None)
        result["contact"] = found["contact"]
        if found["contact"] is None:   # record-only: no contact was made, so no order either
            result.update(order=None, created=True)
            return result
        values = _card(card, writers, _fresh_state(direction, message_id, at, text))
        made = client.create_task(
            Entity("contact", str(found["contact"])), order.get("name") or f"{contact.get('name') or contact['value']}",
            responsible=order.get("responsible") or None, status=order.get("status") or None,
            pipeline=client.process_id(order.get("process")) if order.get("process") else None,
            fields={**(order.get("fields") or {}), order["field"]: conversation, **values})
        if made is None:   # record-only: nothing was made
            result.update(order=None, created=True)
            return result
        current, created = str(made), True
        _save_state(ctx, current, _fresh_state(direction, message_id, at, text))
    else:
        created = False
    ctx.rt.store.set(_order_key(ctx, conversation), current, ex=STATE_TTL)
    if response and not created and direction == "outgoing":   # before the answered messages are let go
        answered = _record_response(ctx, current, at, response)
        if answered is not None:
            result["response_seconds"] = answered
    state = _state(ctx, current) if created else _note(ctx, current, direction, message_id, at, text)
    if photo:   # the client's latest photo in this order (pipeline/steps/save_order_photo.py reads it)
        _keep_photo(ctx, current, at, photo)
    if not created:
        client.set_fields(Entity("task", current), _card(card, writers, state))
    result.update(order=current, created=created, unanswered=state["unanswered"], last_writer=state["writer"])
    return result


def _current_order(ctx: StepContext, conversation: str, field: str, closed: set[str]) -> str | None:
    """The conversation's open order: the one used last while open, else the newest open task whose
    conversation field holds it (read from the CRM: also what a run cut short may have made)."""
    client = ctx.client
    known = ctx.rt.store.get(_order_key(ctx, conversation))
    if known:
        known = known.decode() if isinstance(known, bytes) else str(known)
        try:
            task = client.get_entity(Entity("task", known))
        except PermanentApiError:   # deleted, or gone: look for another
            task = {"stage": {"id": "gone"}}
            closed = closed | {"gone"}
        # None: the client read nothing (record-only mode): the order it used is still the one
        if task is None or not _closed(task, closed):
            return known
    for task in reversed(client.find_tasks(field, conversation) or []):
        if not _closed(task, closed) and not task.get("deleted"):
            return str(task["id"])
    return None


def _closed(task: dict[str, Any], closed: set[str]) -> bool:
    stage = task.get("stage") or {}
    return str(stage.get("name") or "").casefold() in closed or str(stage.get("id") or "") in closed


# --- the card's state, per order ------------------------------------------------------------------

def _order_key(ctx: StepContext, conversation: str) -> str:
    return ctx.rt.keys("order-of", ctx.connection, conversation)


def _fresh_state(direction: str, message_id: str, at: datetime, text: str) -> dict[str, Any]:
    return {"last_at": at.isoformat(), "text": text, "writer": "client" if direction == "incoming" else "manager",
            "unanswered": 1 if direction == "incoming" else 0, "pending": {message_id: at.timestamp()}
            if direction == "incoming" else {}, "replied_at": None if direction == "incoming" else at.timestamp()}


def _save_state(ctx: StepContext, order: str, state: dict[str, Any]) -> None:
    store, keys = ctx.rt.store, ctx.rt.keys
    with store.pipeline() as pipe:
        pipe.hset(keys("order-card", ctx.connection, order), mapping={
            "last_at": state["last_at"], "text": state["text"], "writer": state["writer"],
            "replied_at": json.dumps(state["replied_at"])})
        if state["pending"]:
            pipe.zadd(keys("order-unanswered", ctx.connection, order), state["pending"])
        pipe.expire(keys("order-card", ctx.connection, order), STATE_TTL)
        pipe.expire(keys("order-unanswered", ctx.connection, order), STATE_TTL)
        pipe.execute()


def _state(ctx: StepContext, order: str) -> dict[str, Any]:
    store, keys = ctx.rt.store, ctx.rt.keys
    raw = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
           for k, v in store.hgetall(keys("order-card", ctx.connection, order)).items()}
    return {"last_at": raw.get("last_at"), "text": raw.get("text") or "", "writer": raw.get("writer"),
            "replied_at": json.loads(raw.get("replied_at") or "null"),
            "unanswered": int(store.zcard(keys("order-unanswered", ctx.connection, order)))}


def _note(ctx: StepContext, order: str, direction: str, message_id: str, at: datetime, text: str) -> dict[str, Any]:
    """Add one message to the order's state (idempotent: a message seen before changes nothing) and
    return the state: a client's message is unanswered unless a manager wrote after it; a manager's
    answers every client message sent before it; the last message is the latest by its time."""
    store, keys = ctx.rt.store, ctx.rt.keys
    state = _state(ctx, order)
    moment = at.timestamp()
    pending = keys("order-unanswered", ctx.connection, order)
    if direction == "incoming":
        if state["replied_at"] is None or moment > float(state["replied_at"]):
            store.zadd(pending, {message_id: moment})
    else:
        state["replied_at"] = max(moment, float(state["replied_at"] or moment))
        store.zremrangebyscore(pending, "-inf", state["replied_at"])
    if state["last_at"] is None or at >= datetime.fromisoformat(state["last_at"]):
        state.update(last_at=at.isoformat(), text=text, writer="client" if direction == "incoming" else "manager")
    state["unanswered"] = int(store.zcard(pending))
    store.hset(keys("order-card", ctx.connection, order), mapping={
        "last_at": state["last_at"], "text": state["text"], "writer": state["writer"],
        "replied_at": json.dumps(state["replied_at"])})
    store.expire(keys("order-card", ctx.connection, order), STATE_TTL)
    store.expire(pending, STATE_TTL)
    return state


def _keep_photo(ctx: StepContext, order: str, at: datetime, photo: dict[str, Any]) -> None:
    key = ctx.rt.keys("order-card", ctx.connection, order)
    kept = json.loads(ctx.rt.store.hget(key, "photo") or "null")
    if kept is None or at.isoformat() >= str(kept.get("at") or ""):
        ctx.rt.store.hset(key, "photo", json.dumps({**photo, "at": at.isoformat()}, ensure_ascii=False))


def order_photo(rt: Any, connection: str, order: str) -> dict[str, Any] | None:
    """The last photo the client sent in this order: {url, name, connection (the inbox), at}, or None."""
    return json.loads(rt.store.hget(rt.keys("order-card", connection, order), "photo") or "null")


def _record_response(ctx: StepContext, order: str, at: datetime, response: dict[str, Any]) -> float | None:
    """A manager's answer to waiting client messages: the seconds since the first of them (working
    seconds only, with the calendar `time: working` put in `response`), a fact
    (metric `response.metric`, its dimensions and `reply`: first, the order's first answer, or next)
    stored under this step's key, so a run again records it once (pipeline/steps/record.py)."""
    store, keys = ctx.rt.store, ctx.rt.keys
    waiting = store.zrangebyscore(keys("order-unanswered", ctx.connection, order), "-inf", at.timestamp(),
                                  start=0, num=1, withscores=True)
    if not waiting:
        return None
    asked = datetime.fromtimestamp(float(waiting[0][1]), timezone.utc)
    if response.get("calendar"):   # time: working — the calendar's working hours between the two only
        seconds = round(WorkingCalendar.from_config(response["calendar"]).working_time_between(asked, at)
                        .total_seconds(), 1)
    else:
        seconds = round(at.timestamp() - asked.timestamp(), 1)
    first = json.loads(store.hget(keys("order-card", ctx.connection, order), "replied_at") or "null") is None
    dimensions = {**response.get("dimensions", {}), "reply": "first" if first else "next"}
    facts = facts_store(ctx.rt.settings)
    row = history.fact_row(f"{ctx.key}|response", response["event_id"], ctx.connection, f"task:{order}",
                           response["rule"], at, response["zone"], response["metric"], seconds, dimensions)
    try:
        facts.add_fact(row)
    except Exception as exc:   # sqlite3.Error, psycopg.Error: the database, not the fact
        raise RetryableApiError(f"fact {response['metric']!r} not recorded: the {facts.name} store failed: "
                                f"{exc}") from None
    return seconds


def _card(card: dict[str, str], writers: dict[str, str], state: dict[str, Any]) -> dict[str, Any]:
    """The card's fields by the names the rule gave each role."""
    values = {"last_message": state["text"], "last_message_at": state["last_at"],
              "last_writer": writers.get(state["writer"] or "", state["writer"]), "unanswered": state["unanswered"]}
    return {field: values[role] for role, field in card.items() if role in values and field}


def _moment(at: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    except ValueError:
        raise PermanentApiError(f"find_or_create order: the message's time {at!r} is not ISO 8601") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
