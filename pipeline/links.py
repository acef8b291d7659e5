"""Telegram groups and buttons bound to CRM records: the pipeline's gate before and after planning.

A bot whose connection has `options.link` serves client groups, each linked to one CRM task
(`/link <number>` in the group; chat id → task kept in Redis, chat id also written to a task
field), and approval buttons signed for one record (`ask_approval`). Before the rules see a
Telegram event, `bind()` turns it into an event about the bound record, or answers and stops it:

- a press whose callback data is a forged or damaged token: audited, answered, nothing else;
- a signed press by someone who is not an approver, or on a message already answered: the same;
- a plain press or a message in a group not linked to any task: audited (so nothing is lost),
  the press answered "not linked", the message optionally reported to a staff chat;
- `/link <number>` is carried out here, since it needs both connections and must fail loudly;
- messages from bots are ignored.

After planning, `claim()` records the first choice per approval message (SET NX in Redis), so a
double press or a redelivered update acts once, and replaces the keyboard by the choice made.
A press that only ran `otherwise:` (a gate refused it) claims nothing: it may be pressed again.
Events of CRM connections pass through `bind()` with one change: a comment the bridge wrote
itself is marked `echo`, so chat sync does not send it back.
"""
from __future__ import annotations

import json
import re
from typing import Any

from connectors.base import Connection, Entity, Event, PermanentApiError, written_key
from connectors.telegram import APPROVAL_TTL, approval_key, link_key, link_options
from pipeline.audit import audit
from pipeline.execute import execute
from pipeline.retry import with_retries
from rules.engine import Plan, PlannedAction

LINK_COMMAND = re.compile(r"^/link(?:@\w+)?(?:\s+#?(\S+))?\s*$")
NOTICES = {  # shown to the person who pressed (answerCallbackQuery: up to 200 characters)
    "forged": "⛔ Ця кнопка недійсна.",                                  # This button is not valid.
    "expired": "⌛ Термін дії цієї кнопки минув.",                     # This button has expired.
    "not_approver": "🔒 Цю кнопку може натиснути лише відповідальна особа.",  # Only the person in charge may press it.
    "chosen": "Вже обрано: {label} ({by}).",                          # Already chosen: … (by whom).
    "not_linked": "Цей чат не прив'язаний до жодної задачі.",           # This chat is not linked to any task.
    "linked": "✅ Чат прив'язано до задачі №{number} «{name}».",        # The chat is linked to task No. … «…».
    "link_usage": "Напишіть: /link <номер задачі>",                   # Write: /link <task number>
    "link_denied": "🔒 Прив'язати чат може лише співробітник агенції.",  # Only agency staff may link a chat.
    "link_missing": "Задачу №{number} не знайдено: {error}",          # Task No. … not found: <error>
    # A message from the unlinked chat «…» from <name>:
    "unlinked_message": "📭 Повідомлення з неприв'язаного чату «{title}» від {name}:\n{text}",
}


def bind(rt: Any, event: Event) -> tuple[Event, dict[str, Any] | None]:
    """(the event to plan, None) or (event, outcome) when it was answered here and must stop."""
    conn = rt.connections.connections.get(event.connection)
    if conn is None:
        return event, None
    if event.kind == "note.added" and conn.type != "telegram":
        return _mark_echo(rt, event), None
    link = link_options(conn)
    if conn.type == "viber" and event.kind == "button.pressed" and link.get("crm"):
        return _press(rt, conn, link, event)   # a Viber keyboard button signed for a record (connectors/viber.py)
    if conn.type != "telegram" or not link.get("crm"):
        return event, None
    if event.kind == "button.pressed":
        return _press(rt, conn, link, event)
    if event.kind in ("message.received", "message.edited"):
        return _message(rt, conn, link, event)
    return event, None


def claim(rt: Any, event: Event, result: Plan) -> bool:
    """Record the first choice of an approval message; False if another press got there first.

    A press that no step of the plan answers (no rule for it, or rules without `answer_button`)
    is answered first, without text, so Telegram stops the button's spinner (answerCallbackQuery;
    until then the client shows it for several seconds)."""
    data = event.data
    if event.kind == "button.pressed" and data.get("callback_id") \
            and not any(a.method == "answer_button" for a in result.actions):
        result.actions.insert(0, PlannedAction(
            rule="answer_button", rule_id="answer_button", step=0, connection=event.connection,
            method="answer_button", key=f"{event.id}|answer_button|spinner",
            args={"callback_id": data["callback_id"], "text": None}))
    if event.kind != "button.pressed" or not data.get("approval"):
        return True
    if not [a for a in result.actions if "/otherwise" not in a.key and not a.key.endswith("|spinner")]:
        return True  # refused by a rule's condition, or no rule acts: the buttons stay usable
    conn = rt.connections.connections[event.connection]
    key = _choice_key(rt, conn, data)
    who = _name(data.get("from"))
    mine = {"event": event.id, "choice": data["button"], "by": who}
    taken = rt.store.set(key, json.dumps(mine, ensure_ascii=False), nx=True, ex=APPROVAL_TTL)
    if not taken:
        first = _chosen(rt, conn, data)
        if first is not None and first["event"] != event.id:
            _answer(rt, conn, event, _chosen_notice(rt, conn, data, first), "approval.already_chosen")
            return False
    policy = _policy(rt, conn, data) or {}
    label = (policy.get("labels") or {}).get(data["button"], data["button"])
    audit(rt, event, "approval.chosen", choice=data["button"], by=who)
    if not rt.client(event.connection).can("edit_buttons"):   # Viber cannot change a sent keyboard
        return True
    result.actions.append(PlannedAction(
        rule="ask_approval", rule_id="ask_approval", step=0, connection=event.connection,
        method="edit_buttons", key=f"{event.id}|ask_approval|keyboard",
        args={"chat": data["chat"]["id"], "message_id": data["message_id"],
              "buttons": [[{"text": f"{label} · {who}"[:64], "data": data["callback_data"]}]]}))
    return True


# --- presses ---------------------------------------------------------------------------------

def _press(rt: Any, conn: Connection, link: dict, event: Event) -> tuple[Event, dict | None]:
    data = event.data
    if data.get("token_error"):
        return event, _answer(rt, conn, event, _notice(link, "forged"), "button.refused",
                              reason=data["token_error"], data=data.get("button"))
    if data.get("approval"):
        policy = _policy(rt, conn, data)
        if policy is None:
            return event, _answer(rt, conn, event, _notice(link, "expired"), "button.refused",
                                  reason="no approval record (expired)")
        if not allowed(policy.get("approvers"), data.get("from"), link):
            return event, _answer(rt, conn, event, _notice(link, "not_approver"), "button.refused",
                                  reason="not an approver", who=data.get("from"))
        first = _chosen(rt, conn, data)
        if first is not None and first["event"] != event.id:
            return event, _answer(rt, conn, event, _chosen_notice(rt, conn, data, first),
                                  "approval.already_chosen")
        return event, None
    chat = str((data.get("chat") or {}).get("id") or "")
    if not chat or _staff_or_private(conn, chat):
        return event, None
    linked = linked_record(rt, conn, chat)
    if linked is None:
        return event, _answer(rt, conn, event, _notice(link, "not_linked"), "button.refused",
                              reason="chat not linked to any record", chat=chat)
    return _bound(event, linked), None


def allowed(approvers: Any, who: dict | None, link: dict) -> bool:
    """`chat_members`/`anyone` (Telegram shows a group's messages to its members only), `staff`
    (options.link.staff), or a list (or comma-separated text) of user ids and @usernames."""
    if approvers in (None, "", "chat_members", "anyone"):
        return True
    names = approvers if isinstance(approvers, list) else re.split(r"[,\s]+", str(approvers))
    wanted: set[str] = set()
    for name in (str(n).strip() for n in names):
        if name in ("chat_members", "anyone"):
            return True
        wanted |= {s.lstrip("@").lower() for s in staff(link)} if name == "staff" else {name.lstrip("@").lower()}
    who = who or {}
    mine = {str(who.get("id") or ""), str(who.get("username") or "").lower()} - {""}
    return bool(mine & (wanted - {""}))


def staff(link: dict) -> list[str]:
    """options.link.staff: a list, or a comma-separated text (one environment variable)."""
    value = link.get("staff") or []
    items = value if isinstance(value, list) else re.split(r"[,\s]+", str(value))
    return [str(i).strip() for i in items if str(i).strip()]


# --- messages --------------------------------------------------------------------------------

def _message(rt: Any, conn: Connection, link: dict, event: Event) -> tuple[Event, dict | None]:
    data = event.data
    chat = str((data.get("chat") or {}).get("id") or "")
    if (data.get("from") or {}).get("is_bot"):
        audit(rt, event, "message.ignored", reason="sent by a bot")
        return event, {"ignored": "bot"}
    command = LINK_COMMAND.match(data.get("text") or "")
    if command and event.kind == "message.received":
        return event, _link(rt, conn, link, event, chat, command.group(1))
    if not chat or _staff_or_private(conn, chat):
        return event, None
    linked = linked_record(rt, conn, chat)
    if linked is not None:
        return _bound(event, linked), None
    audit(rt, event, "chat.unlinked", chat=chat, text=data.get("text"), files=data.get("files"))
    staff = link.get("unlinked_notice")
    if staff:
        text = _notice(link, "unlinked_message").format(
            title=(data.get("chat") or {}).get("title") or chat, name=_name(data.get("from")),
            text=data.get("text") or "📎 " + ", ".join(f.get("name") or f["kind"] for f in data.get("files") or []))
        _step(rt, event, conn.name, "send_message", "unlinked-notice", chat=staff, text=text)
    return event, {"unlinked": chat}


def _link(rt: Any, conn: Connection, link: dict, event: Event, chat: str, number: str | None) -> dict:
    """`/link 1042`: check the sender and the task, write the chat id to the task, remember it.

    Re-linking the group to another task clears the field of the task it was linked to (when that
    field still names this group); linking a task that another group had unlinks that group. The
    writes and replies are planned steps run by pipeline.execute under keys of this update, so a
    job run again after a crash skips what was done (the reply is not sent twice)."""
    def say(step: str, text: str) -> None:
        _step(rt, event, conn.name, "send_message", step, chat=chat, text=text)

    if not number or not number.isdigit():
        say("usage", _notice(link, "link_usage"))
        return {"link": "usage"}
    if not staff(link) or not allowed("staff", event.data.get("from"), link):
        audit(rt, event, "chat.link_refused", reason="not staff", who=event.data.get("from"))
        say("denied", _notice(link, "link_denied"))
        return {"link": "denied"}
    crm, field = rt.client(link["crm"]), link.get("field") or "Telegram чат"
    record = {"connection": link["crm"], "type": "task", "id": number}
    try:
        fresh = with_retries(rt, lambda: crm.get_entity(Entity("task", number))) or {}
        previous = linked_record(rt, conn, chat)
        if previous is not None and (previous["type"], str(previous["id"])) != ("task", number):
            _clear_old(rt, conn, event, crm, previous, field, chat)
        _step(rt, event, link["crm"], "set_fields", "field", entity={"type": "task", "id": number},
              fields={field: chat})
    except PermanentApiError as exc:
        audit(rt, event, "chat.link_failed", task=number, error=str(exc))
        say("failed", _notice(link, "link_missing").format(number=number, error=str(exc)[:200]))
        return {"link": "failed"}
    other = str((fresh.get("fields") or {}).get(field) or "").strip()
    if other and other != chat and linked_record(rt, conn, other) == record:
        rt.store.delete(link_key(rt.keys.prefix, conn.name, other))   # the task now belongs to this group
        audit(rt, event, "chat.unlinked", chat=other, reason=f"task {number} linked to chat {chat}")
    rt.store.set(link_key(rt.keys.prefix, conn.name, chat), json.dumps(record))
    audit(rt, event, "chat.linked", chat=chat, task=number, previous=previous)
    say("linked", _notice(link, "linked").format(number=number, name=fresh.get("name") or ""))
    return {"linked": record}


def _clear_old(rt: Any, conn: Connection, event: Event, crm: Any, previous: dict, field: str, chat: str) -> None:
    """Empty the chat field of the task this group was linked to, if it still names this group."""
    old = Entity(previous["type"], str(previous["id"]))
    try:
        before = with_retries(rt, lambda: crm.get_entity(old)) or {}
    except PermanentApiError as exc:   # deleted since: nothing left to clear
        audit(rt, event, "chat.unlink_skipped", task=old.id, error=str(exc))
        return
    if str((before.get("fields") or {}).get(field) or "").strip() != chat:
        return
    try:
        _step(rt, event, previous["connection"], "set_fields", "clear-old",
              entity={"type": old.type, "id": old.id}, fields={field: ""})
    except PermanentApiError as exc:   # the new link matters more: it goes on, the failure audited
        audit(rt, event, "chat.unlink_failed", task=old.id, error=str(exc))


def _step(rt: Any, event: Event, connection: str, method: str, name: str, **args: Any) -> None:
    """One side effect of /link or of a message from an unlinked group, as a planned action: once
    per update, its idempotency key recorded by execute like any rule's step."""
    execute(rt, event, PlannedAction(rule="link", rule_id="link", step=0, connection=connection,
                                            method=method, args=args, key=f"{event.id}|link|{name}"))


def linked_record(rt: Any, conn: Connection, chat: str) -> dict[str, str] | None:
    raw = rt.store.get(link_key(rt.keys.prefix, conn.name, chat))
    return json.loads(raw) if raw else None


# --- CRM events -------------------------------------------------------------------------------

def _mark_echo(rt: Any, event: Event) -> Event:
    comment = (event.data.get("comment") or {}).get("id")
    if comment and rt.store.exists(written_key(rt.keys.prefix, event.connection, "comment", comment)):
        return Event(**{**event.__dict__, "data": {**event.data, "echo": True}})
    return event


# --- helpers ----------------------------------------------------------------------------------

def _bound(event: Event, record: dict[str, str]) -> Event:
    return Event(**{**event.__dict__, "entity": Entity(record["type"], str(record["id"])),
                    "data": {**event.data, "record": record}})


def _staff_or_private(conn: Connection, chat: str) -> bool:
    """Private chats and the connection's named chats (staff, head…) are not client groups."""
    named = {str(v) for v in ((conn.options or {}).get("chats") or {}).values()}
    return not chat.startswith("-") or chat in named


def _policy(rt: Any, conn: Connection, data: dict) -> dict | None:
    raw = rt.store.get(approval_key(rt.keys.prefix, conn.name, data["record"], data["approval"]))
    return json.loads(raw) if raw else None


def _choice_key(rt: Any, conn: Connection, data: dict) -> str:
    return approval_key(rt.keys.prefix, conn.name, data["record"], data["approval"]) + ":choice"


def _chosen(rt: Any, conn: Connection, data: dict) -> dict | None:
    raw = rt.store.get(_choice_key(rt, conn, data))
    return json.loads(raw) if raw else None


def _chosen_notice(rt: Any, conn: Connection, data: dict, first: dict) -> str:
    labels = (_policy(rt, conn, data) or {}).get("labels") or {}
    return _notice(link_options(conn), "chosen").format(label=labels.get(first["choice"], first["choice"]),
                                                        by=first.get("by") or "")


def _notice(link: dict, name: str) -> str:
    return str((link.get("notices") or {}).get(name) or NOTICES[name])


def _name(person: dict | None) -> str:
    person = person or {}
    return str(person.get("name") or (f"@{person['username']}" if person.get("username") else person.get("id", "")))


def _answer(rt: Any, conn: Connection, event: Event, text: str, what: str, **details: Any) -> dict:
    audit(rt, event, what, notice=text, **details)
    callback = event.data.get("callback_id")
    if callback:
        try:
            with_retries(rt, lambda: rt.client(conn.name).answer_button(callback, text[:200]))
        except PermanentApiError as exc:  # e.g. "query is too old": the refusal itself stands
            audit(rt, event, "button.answer_failed", error=str(exc))
    return {"answered": what}
