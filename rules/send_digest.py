"""A list per person (overdue tasks, deals without a task) to each person and a summary to the head.

    on: {schedule: {at: "09:00", working_days: true}, connection: portal-b24}
    do:
      - send_digest:
          query: [overdue_tasks, deals_without_task]   # or one of them
          source: portal-b24                   # the CRM (default: the rule's connection)
          group_by: responsible                # one message per responsible user
          to: {connection: portal-b24, user: responsible}     # each person's own list, where it goes:
              #   {connection, user: responsible}  a CRM notification to the person (Bitrix24 notify)
              #   {connection, chats: {"Иван Петренко": "-100…"}}  each person's Telegram chat
              #   {connection, emails: {"Иван Петренко": "ivan@…"}} each person's address
              #   {connection, chat: "-100…"} / {connection, email: "head@…"} / {connection, user: "Ольга Коваленко"}
              #                                    every person's list to that one chat, address or user
          head: {connection: portal-b24, user: "Ольга Коваленко"}   # optional: the summary (same shapes)
          title: "Контроль на {{ data.scheduled_for[:10] }}"

Sources (`query`): `overdue_tasks` (open tasks past their deadline: amoCRM, Bitrix24, Planfix) and
`deals_without_task` (open deals and leads with no open task: amoCRM, Bitrix24). A source the
CRM cannot give, or a destination whose connection cannot deliver it, is refused at start-up with
the rule's file:line (`unsupported`). A person with no channel (no entry in `chats:`/`emails:`,
or a CRM user the CRM names as no longer active) gets nothing: their whole list goes into the head's
summary, marked. Nobody with anything: nothing is sent. Each message is sent once, even when
the step is retried after a failure half-way.
"""
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from config.loader import ConfigError
from connectors.base import is_crm_client
from rules._verb_support import action_targets, each_action

NAME = "send_digest"
# a source → the CRM client verb that reads it
QUERIES = {"overdue_tasks": "overdue_tasks", "deals_without_task": "deals_without_task"}
# a destination key → the client verb that delivers to it
DELIVERY = {"chat": "send_message", "chats": "send_message", "email": "send_email", "emails": "send_email",
            "user": "notify"}
_SHAPES = ("{connection, user: responsible}, {connection, chats: {person: chat}}, "
           "{connection, emails: {person: address}}, {connection, chat}, {connection, email} or {connection, user}")


def _queries(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


class Query(fields.Field):
    """One source or a list of them."""

    def _deserialize(self, value, attr, data, **kwargs):
        names = _queries(value)
        wrong = [n for n in names if not isinstance(n, str) or n not in QUERIES]
        if not names or wrong or not isinstance(value, (str, list)):
            raise ValidationError(f"expected one of {', '.join(QUERIES)} or a list of them, found {value!r}")
        return list(dict.fromkeys(names))


def _destination(value: dict, what: str) -> None:
    keys = [k for k in DELIVERY if value.get(k)]
    if not value.get("connection") or len(keys) != 1:
        raise ValidationError(f"{what}: expected {_SHAPES}")
    if keys[0] in ("chats", "emails") and not isinstance(value[keys[0]], dict):
        raise ValidationError(f"{what}: {keys[0]} maps each person (a name as the CRM shows it, or an id) to "
                              f"a {'chat' if keys[0] == 'chats' else 'address'}")


class Options(Schema):
    query = Query(required=True, metadata={"expected": f"one of {', '.join(QUERIES)} or a list"})
    source = fields.String(load_default=None, metadata={"expected": "the CRM connection to read"})
    group_by = fields.String(load_default="responsible", validate=validate.OneOf(["responsible"]),
                             metadata={"expected": "responsible"})
    to = fields.Dict(required=True, metadata={"expected": _SHAPES})
    head = fields.Dict(load_default=None, metadata={"expected": "the summary's destination: " + _SHAPES})
    title = fields.String(load_default="Просроченные задачи", metadata={"expected": "the first line (a template)"})

    @validates("to")
    def _to(self, value: dict, **_) -> None:
        _destination(value, "to")

    @validates("head")
    def _head(self, value: dict | None, **_) -> None:
        if value is not None:
            _destination(value, "head")


def _kept(value: dict | None) -> dict | None:
    if value is None:
        return None
    return {k: (dict((str(p), str(a)) for p, a in v.items()) if isinstance(v, dict) else str(v))
            for k, v in value.items() if k == "connection" or k in DELIVERY}


def plan(ctx, options: dict) -> list:
    source = options["source"] or ctx.event.connection
    if not source:
        raise ValueError("source: the CRM connection to read is not known; name it")
    to = _kept(options["to"])
    return [ctx.step("send_digest", to["connection"], source=source, query=options["query"],
                     group_by=options["group_by"], to=to, head=_kept(options["head"]), title=options["title"],
                     now=ctx.now.isoformat(), tz=ctx.calendar.timezone)]


def unsupported(rules: list, connections: Any, connectors: dict[str, Any]) -> list[ConfigError]:
    """At start-up: each send_digest's `source` must give every `query` (its client has the verb),
    and `to:`/`head:` must name connections that can deliver there (send_message, send_email, notify)."""
    errors: list[ConfigError] = []
    known = getattr(connections, "connections", None) or {}

    def client(name: str) -> Any:
        conn = known.get(name)
        return None if conn is None or conn.type not in connectors else (conn.type, connectors[conn.type].Client)

    for rule, spec, options in each_action(rules):
        if spec.verb != NAME:
            continue
        where = f'rule "{rule.name}": send_digest → '
        sources = [options["source"]] if options.get("source") else action_targets(rule, {})[0]
        for name in sources:
            found = client(name)
            if found is None:
                continue   # an unknown connection name is reported by the rule files' own checks
            kind, cls = found
            if not is_crm_client(cls):
                continue   # not a CRM at all: rules/_offline.py says so, once
            gives = [q for q, verb in QUERIES.items() if verb in cls.capabilities]
            for query in _queries(options.get("query")):
                if query in QUERIES and QUERIES[query] not in cls.capabilities:
                    offer = f"; it gives {', '.join(gives)}" if gives else "; it gives no digest source"
                    errors.append(ConfigError(rule.file, spec.line, where + f"query {query}: not supported for "
                                              f"{kind} (connection {name!r}){offer}"))
        for what in ("to", "head"):
            value = options.get(what)
            if not isinstance(value, dict) or not value.get("connection"):
                continue
            found = client(str(value["connection"]))
            key = next((k for k in DELIVERY if value.get(k)), None)
            if found is None or key is None or DELIVERY[key] in found[1].capabilities:
                continue
            errors.append(ConfigError(rule.file, spec.line, where + f"{what}: {{{key}: …}} needs {DELIVERY[key]}, "
                                      f"which a {found[0]} connection ({value['connection']!r}) cannot do"))
    return errors
