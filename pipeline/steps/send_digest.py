"""Digests: read a list from one connection, send it per person through another.

The `send_digest` verb plans one step; the executor runs it here, since it touches two
connections (the CRM it reads and the chat or mailbox it writes to). Each person's message is
marked sent under the step's key, so a retried step does not send it twice.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

TIME_FORMAT = "%d.%m.%Y %H:%M"


def group_overdue(tasks: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(person's name, their tasks oldest first)], people with the most overdue tasks first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        person = task.get("responsible") or {}
        groups.setdefault(person.get("name") or f"user {person.get('id')}", []).append(task)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def render(title: str, person: str, tasks: list[dict[str, Any]], tz: Any) -> str:
    lines = [title, f"{person}: {len(tasks)}"]
    for task in tasks:
        due = datetime.fromisoformat(task["due"]).astimezone(tz).strftime(TIME_FORMAT) if task.get("due") else "—"
        parent = task.get("parent") or {}
        where = f" [{parent.get('type')} {parent.get('id')}]" if parent.get("id") not in (None, "None") else ""
        lines.append(f"• {task.get('text') or '—'} — до {due}{where}")
    return "\n".join(lines)


METHOD = "send_digest"
REQUIRES = frozenset({"overdue_tasks"})   # of the CRM it reads (`source`), not of the action's connection


def run(ctx: Any, **args: Any) -> dict[str, Any]:
    return send_digest(ctx.rt, ctx.key, **args)


def send_digest(rt: Any, key: str, source: str, query: str, group_by: str, to: dict[str, str], title: str,
                now: str, tz: str | None = None) -> dict[str, Any]:
    """Read the overdue tasks from `source`, send one message per person to `to`."""
    crm = rt.client(source)
    tasks = crm.overdue_tasks(before=now)
    moment = datetime.fromisoformat(now)
    zone = ZoneInfo(tz) if tz else moment.tzinfo
    sent = skipped = 0
    target = rt.client(to["connection"])
    for person, items in group_overdue(tasks or []):
        mark = rt.keys("done", f"{key}:digest:{person}")
        if rt.store.exists(mark):
            skipped += 1
            continue
        text = render(title, person, items, zone)
        if to.get("email"):
            target.send_email(to=to["email"], subject=f"{title} — {person}", text=text)
        else:
            target.send_message(chat=to["chat"], text=text)
        rt.store.set(mark, "1", ex=rt.settings.done_ttl)
        sent += 1
    return {"people": sent, "already_sent": skipped, "tasks": len(tasks or [])}
