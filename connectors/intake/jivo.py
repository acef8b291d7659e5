"""Jivo's chat webhooks: the visitor who left contacts becomes a lead (`message.received`).

Wire format (/work/shared/API-REFERENCE.md §12; jivo.ru/docs/webhooks [official]; samples in
tests/payloads/jivo/): a JSON POST per event, named in `event_name`; `widget_id` (text),
`chat_id` (a number), `visitor {name, email, phone, description, number, chats_count}` (name,
email and phone only when the visitor gave them), `page {url, title}`, `session {utm_json {source,
medium, campaign, content, term}, utm "source=google|medium=cpc|…", geoip, ip_addr, user_agent}`.

    offline_message   the offline form: `message` (text) and `offline_message_id`
    chat_finished     a chat closed: `chat {messages [{message, timestamp, type visitor|agent,
                      agent_id}], rate, blacklisted}`, `agents [{id, name, email, phone}]`

Each of these is one event: `jivo:offline:<offline_message_id>` and `jivo:chat:<chat_id>` (a chat
finishes once). The other events (chat_accepted, chat_updated, call_event, client_updated, …) are
answered 200 with nothing queued. A blacklisted chat (the agent's spam button) is not a lead:
nothing is queued. Jivo signs nothing: the URL carries the secret (`?token=`), compared in
constant time. Jivo reads `{"result": "ok"}` only from chat_accepted/chat_updated replies, which
are not subscribed to here, so the door's own 200 answer serves.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from connectors.base import (
    BadPayload, BaseClient, Connection, Entity, Event, RawWebhook, check_secret, parse_json, utc_iso,
)
from connectors.intake import leads

SOURCE = "jivo"
INBOUND_ONLY = True
CONTENT_TYPES = (leads.JSON,)
TOKEN_HEADER = "X-Crmbridge-Token"
LEADS = ("offline_message", "chat_finished")
IGNORED = ("chat_accepted", "chat_updated", "chat_assigned", "call_event", "client_updated",
           "client_attribute_updated")
WIDGET = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_ID = 2 ** 63 - 1


def verify(raw: RawWebhook, connection: Connection) -> None:
    given = raw.headers.get(TOKEN_HEADER) or raw.query.get("token")
    check_secret(given, connection, f"missing or wrong secret (URL 'token' or {TOKEN_HEADER} header)")


def parse(raw: RawWebhook, connection: Connection) -> list[Event]:
    body = parse_json(raw.body)
    if not isinstance(body, dict):
        raise BadPayload(f"expected a JSON object, found {type(body).__name__}")
    name = body.get("event_name")
    if name in IGNORED:
        return []
    if name not in LEADS:
        raise BadPayload(f"event_name {str(name)[:40]!r}: expected one of {', '.join(LEADS + IGNORED)}")
    widget = body.get("widget_id")
    if not isinstance(widget, str) or not WIDGET.fullmatch(widget):
        raise BadPayload("widget_id is not a Jivo widget id (text of A-Z a-z 0-9 _ -)")
    chat_id = _id(body.get("chat_id"), "chat_id")
    visitor = _object(body, "visitor")
    page, session = _object(body, "page", optional=True), _object(body, "session", optional=True)
    for key in ("name", "email", "phone", "description"):
        if visitor.get(key) is not None and not isinstance(visitor.get(key), str):
            raise BadPayload(f"visitor.{key} is not text")
    if name == "offline_message":
        message_id = _id(body.get("offline_message_id"), "offline_message_id")
        text = body.get("message")
        if not isinstance(text, str):
            raise BadPayload("offline_message without its message (text)")
        key, messages, stamp = f"{connection.name}:offline:{message_id}", [{"type": "visitor", "text": text}], None
    else:
        chat = _object(body, "chat")
        if chat.get("blacklisted") is True:
            return []      # the agent marked the visitor as spam
        messages, stamp = _messages(chat.get("messages")), None
        stamp = max((m["at"] for m in messages if m.get("at")), default=None)
        text = "\n".join(m["text"] for m in messages if m["type"] == "visitor") or None
        key = f"{connection.name}:chat:{chat_id}"
    utm_json = session.get("utm_json") if isinstance(session.get("utm_json"), dict) else {}
    data = leads.lead(door=SOURCE, connection=connection.name, form=widget, name=visitor.get("name"),
                      phone=visitor.get("phone"), email=visitor.get("email"), text=text,
                      page=page.get("url"), utm_tags=leads.utm({f"utm_{k}": v for k, v in utm_json.items()}),
                      region=leads.region_of(connection.options), event_name=name, chat_id=chat_id,
                      widget_id=widget, messages=messages, description=visitor.get("description"))
    return [Event(id=key, connection=connection.name, source=SOURCE, kind="message.received",
                  entity=Entity("chat", chat_id), data=data, raw=body, occurred_at=stamp or utc_iso())]


def _id(value: Any, where: str) -> str:
    """Jivo's numeric ids (a number, or its digits as text in some samples) as text."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise BadPayload(f"{where} is not a positive integer id")
    return str(value)


def _object(body: dict[str, Any], key: str, optional: bool = False) -> dict[str, Any]:
    value = body.get(key)
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise BadPayload(f"'{key}' is not an object")
    return value


def _messages(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise BadPayload("chat.messages is not a list")
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("message"), str) \
                or item.get("type") not in ("visitor", "agent"):
            raise BadPayload("a chat message without its text or its type (visitor or agent)")
        stamp = item.get("timestamp")
        at = None
        if isinstance(stamp, int) and not isinstance(stamp, bool) and 0 < stamp < 2 ** 37:
            at = datetime.fromtimestamp(stamp, timezone.utc).isoformat()
        found.append({"type": item["type"], "text": item["message"], "at": at})
    return found


def option_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """Checked at start-up (config/connections.py, with file:line)."""
    return [(k, m) for k, m in leads.form_option_problems(options) if k == "region"]


class Client(BaseClient):
    """Jivo's webhooks are inbound only."""
