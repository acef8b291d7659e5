"""What the pipeline learns from an event before the rules see it, by the type of the event's
connection: a telephony call that ended in a talk pauses the callbacks planned for that manager
and client (pipeline/steps/call_back.py).

`observe(rt, event)` is called for every event; it answers what was learned (the pipeline audits
it as `connector.observed`) or None.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from connectors.base import Event
from pipeline.steps import call_back, send_bulk


def observe(rt: Any, event: Event) -> dict[str, Any] | None:
    """Let the observer of the event's connection type learn from it."""
    conn = rt.connections.connections.get(event.connection)
    learn = OBSERVERS.get(conn.type) if conn is not None else None
    return learn(rt, event) if learn else None


def talk_pauses_callbacks(rt: Any, event: Event) -> dict[str, Any] | None:
    """A call ended: if manager and client talked, pause the callbacks planned for them until the
    moment the callback's rule planned: {"paused_until", "entity"}."""
    if event.kind != "call.ended" or not event.data.get("talked"):
        return None
    manager, number = str(event.data.get("manager") or ""), str(event.data.get("client") or "")
    if not manager or not number:
        return None
    extension = call_back.digits(rt.client(event.connection).extension(manager))
    pending = call_back.read(rt, call_back.call_key(rt, event.connection, "pending", extension, number))
    if not pending or not pending.get("pause_until"):
        return None
    until = pending["pause_until"]
    ttl = max(call_back.PAUSE_TTL, int((datetime.fromisoformat(until) - datetime.now(UTC)).total_seconds()))
    call_back.keep(rt, call_back.call_key(rt, event.connection, "paused", manager, number),
                   {"until": until, "talked_at": event.data.get("call_start"), "entity": pending.get("entity")}, ttl)
    return {"paused_until": until, "entity": pending.get("entity")}


def opt_outs(rt: Any, event: Event) -> dict[str, Any] | None:
    """A Viber user unsubscribed, or wrote STOP/«стоп»: they get no bulk message again
    (the connection's opt-out set, pipeline/steps/send_bulk.py)."""
    unsubscribed = event.kind == "subscription.changed" and event.data.get("subscribed") is False
    stop = event.kind == "message.received" and event.data.get("stop") is True
    chat = str((event.data.get("chat") or {}).get("id") or "")
    if not (unsubscribed or stop) or not chat:
        return None
    send_bulk.opt_out(rt, event.connection, chat)
    return {"opted_out": chat, "why": "unsubscribed" if unsubscribed else "stop"}


# connection type → what is learned from its events (connectors.CONNECTORS names the types)
OBSERVERS: dict[str, Callable[[Any, Event], dict[str, Any] | None]] = {
    "zadarma": talk_pauses_callbacks,
    "viber": opt_outs,
}
