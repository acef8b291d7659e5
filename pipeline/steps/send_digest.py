"""Digests: read lists from one connection, send them per person (and a summary) through another.

The `send_digest` verb plans one step; the executor runs it here, since it touches two
connections (the CRM it reads and the chat, mailbox or CRM notifications it writes to). The
sources are CRM client verbs (`overdue_tasks`, `deals_without_task`; each client pages through
its vendor's lists). Each message is marked sent under the step's key, so a retried step does
not send it twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from connectors.base import PermanentApiError

TIME_FORMAT = "%d.%m.%Y %H:%M"
SOURCES = ("overdue_tasks", "deals_without_task")
NO_CHANNEL = "нет канала для уведомления"
KIND_NAMES = {"deal": "сделка", "lead": "лид", "project": "проект", "contact": "контакт", "company": "компания"}


@dataclass
class Person:
    """One responsible user and what the digest lists for them."""
    id: str | None
    name: str
    tasks: list[dict[str, Any]] = field(default_factory=list)
    deals: list[dict[str, Any]] = field(default_factory=list)
    known: bool = True   # the CRM names the user and does not say they left

    @property
    def count(self) -> int:
        return len(self.tasks) + len(self.deals)


def group(tasks: list[dict[str, Any]], deals: list[dict[str, Any]]) -> list[Person]:
    """People with the most items first, then by name; tasks oldest first, deals as read."""
    people: dict[str, Person] = {}
    for bucket, items in (("tasks", tasks), ("deals", deals)):
        for item in items:
            who = item.get("responsible") or {}
            uid = str(who["id"]) if who.get("id") not in (None, "", "None", "0") else None
            name = who.get("name") or (f"user {uid}" if uid else "без ответственного")
            # a user the CRM does not name, or names as no longer active (dismissed), cannot be told
            person = people.setdefault(name, Person(uid, name, known=bool(who.get("name")) and who.get("active", True)))
            getattr(person, bucket).append(item)
    return sorted(people.values(), key=lambda p: (-p.count, p.name))


def _where(parent: Any) -> str:
    parent = parent or {}
    return f" [{parent.get('type')} {parent.get('id')}]" if parent.get("id") not in (None, "None") else ""


def lines(person: Person, tz: Any) -> list[str]:
    out = []
    for task in person.tasks:
        due = datetime.fromisoformat(task["due"]).astimezone(tz).strftime(TIME_FORMAT) if task.get("due") else "—"
        out.append(f"• {task.get('text') or '—'} — до {due}{_where(task.get('parent'))}")
    if person.deals:
        out.append(f"Без открытой задачи: {len(person.deals)}")
        for d in person.deals:
            kind = d.get("type")
            out.append(f"• {KIND_NAMES.get(kind, kind)} «{d.get('name') or '—'}» [{kind} {d.get('id')}]")
    return out


def render(title: str, person: Person, tz: Any) -> str:
    """One person's message: the title, "<name>: <count>", then their items."""
    return "\n".join([title, f"{person.name}: {person.count}", *lines(person, tz)])


def summary(title: str, people: list[Person], unreachable: list[Person], tz: Any) -> str:
    """The head's message: per person the counts; the lists of those who could not be told, whole."""
    out = [title, f"Итого: просроченных задач {sum(len(p.tasks) for p in people)}, "
                  f"без открытой задачи {sum(len(p.deals) for p in people)}"]
    out += [f"{p.name}: просрочено {len(p.tasks)}, без задачи {len(p.deals)}" for p in people]
    for person in unreachable:
        out += ["", f"{person.name} — {NO_CHANNEL}:", *lines(person, tz)]
    return "\n".join(out)


def address(to: dict[str, Any], person: Person) -> tuple[str, str] | None:
    """Where this person's list goes: ("chat" | "email" | "user", value), or None (no channel)."""
    if to.get("user") == "responsible":
        return ("user", person.id) if person.id and person.known else None
    for key, kind in (("chats", "chat"), ("emails", "email")):
        if key in to:
            book = to[key] or {}
            found = book.get(person.name) or (book.get(person.id) if person.id else None)
            return (kind, str(found)) if found else None
    kind = next(k for k in ("chat", "email", "user") if to.get(k))
    return kind, str(to[kind])


def deliver(target: Any, where: tuple[str, str], subject: str, text: str) -> None:
    kind, value = where
    if kind == "email":
        target.send_email(to=value, subject=subject, text=text)
    elif kind == "user":
        target.notify(user=value, text=text)
    else:
        target.send_message(chat=value, text=text)


METHOD = "send_digest"
REQUIRES = frozenset({"overdue_tasks"})   # of the CRM it reads (`source`), not of the action's connection;
# rules/send_digest.py `unsupported` holds every `query` against the source's capabilities at start-up


def run(ctx: Any, **args: Any) -> dict[str, Any]:
    return send_digest(ctx.rt, ctx.key, **args)


def send_digest(rt: Any, key: str, source: str, query: str | list[str], group_by: str, to: dict[str, Any],
                title: str, now: str, tz: str | None = None, head: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read the sources from `source`, send each person their list (to `to`), the head a summary."""
    crm = rt.client(source)
    queries = [query] if isinstance(query, str) else list(query)
    lacking = [q for q in queries if q not in SOURCES or not crm.can(q)]
    if lacking:
        raise PermanentApiError(f"send_digest: connection {source!r} cannot give {', '.join(lacking)}")
    tasks = crm.overdue_tasks(before=now) if "overdue_tasks" in queries else []
    deals = crm.deals_without_task() if "deals_without_task" in queries else []
    moment = datetime.fromisoformat(now)
    zone = ZoneInfo(tz) if tz else moment.tzinfo
    people = group(tasks or [], deals or [])
    sent = skipped = 0
    unreachable: list[Person] = []

    def once(name: str, client: Any, where: tuple[str, str], subject: str, text: str) -> None:
        nonlocal sent, skipped
        mark = rt.keys("done", f"{key}:digest:{name}")
        if rt.store.exists(mark):
            skipped += 1
            return
        deliver(client, where, subject, text)
        rt.store.set(mark, "1", ex=rt.settings.done_ttl)
        sent += 1

    target = rt.client(to["connection"])
    for person in people:
        where = address(to, person)
        if where is None:
            unreachable.append(person)
            continue
        once(person.name, target, where, f"{title} — {person.name}", render(title, person, zone))
    if head and people:
        where = address(head, Person(None, "head"))
        once("head", rt.client(head["connection"]), where, title, summary(title, people, unreachable, zone))
    return {"people": sent, "already_sent": skipped, "tasks": len(tasks or []), "deals": len(deals or []),
            "unreachable": [p.name for p in unreachable]}
