"""Find the one CRM contact a phone, an email or an inbox sender names; create it when none does;
link it to the event's deal, lead or task.

    do:
      - find_or_create:
          connection: shop-planfix                  # the CRM (an inbox event's own connection is not one)
          by: inbox_sender                          # phone | email | inbox_sender
          value: "{{ data.from.link }}"             # what to match (a template)
          name: "{{ data.from.name }}"              # the new contact's name (default: the value)
          fields: {"Instagram": "{{ data.from.link }}", "Акаунт": "{{ data.account.name }}"}
          link: true                                # link it to the event's deal/lead/task (default)

Phones match on their last 10 digits (+380 67 123 45 67 = 067 123 45 67), emails in any case, an
inbox sender on the contact field that keeps the sender's profile link or id: `field:` names it,
or it is the entry of `fields:` whose value is the same template as `value:`. Several contacts
match: the oldest is taken and the step's result lists them (`several_matched`). One step; it
searches before it creates, every time, but it is not repeated blindly after a crash or a timeout
in the middle of it (a vendor's search may not show a contact made a moment ago): such a step goes
to the dead letters as "may have been sent", like other creates. The result, recorded with
the step and audited: {contact, created, by, value, linked | not_linked, several_matched}.
Start-up refuses a CRM connection that cannot do the `by:` asked (unsupported(), with file:line).

`kind: order` (playbook B1/B2; Planfix): the open order of the inbox conversation the event is
about, a task found or created for the client, and its card kept on every message, the client's
and the managers' (pipeline/steps/find_order.py):

    - find_or_create:
        connection: shop-planfix
        kind: order
        by: inbox_sender
        value: "{{ data.from.link }}"               # the client, as for a contact
        name: "{{ data.from.name }}"
        field: "Instagram"
        fields: {"Акаунт": "{{ data.account.name }}"}
        order:
          field: "Розмова"                          # the order's line field keeping the conversation
          process: "Продажі"                        # the new order's process, status and responsible
          status: "Нове звернення"
          closed: ["Оплачено", "Неуспішно", "Спам"] # an order in these is closed: the next message opens one
          name: "{{ data.from.name }} · {{ data.account.name }}"
          responsible: "Олена Коваленко"
          fields: {"Акаунт": "{{ data.account.name }}"}   # written when the order is made
        card: {last_message: "Останнє повідомлення", last_message_at: "Дата останнього повідомлення",
               last_writer: "Хто писав останній", unanswered: "Без відповіді"}
        writers: {client: "Клієнт", manager: "Менеджер"}  # the words last_writer gets (these are the default)
        response: {metric: response_seconds, dimensions: {account: "{{ data.account.name }}"}, time: working}

`response:` records a manager's answer as a fact for reports: the seconds from the first client
message it answers (dimension `reply`: first, the order's first answer, or next); `time: working`
counts only the working hours of the rule's calendar (a message at 18:59 answered at 10:02 the
next working day with hours to 19:00: 180 s), `elapsed` (the default) every second.

The message is the event's (`conversation`, `direction`, `message_id`, `at`, `text` default to an
inbox message's conversation, data.direction, data.message_id, occurred_at and data.text).
"""
from __future__ import annotations

from typing import Any

from marshmallow import Schema, validate
from marshmallow import fields as f

from config.loader import ConfigError
from connectors.base import FIND_BY
from rules._verb_support import action_targets, each_action

NAME = "find_or_create"
LINKABLE = ("deal", "lead", "task")
KINDS = ("contact", "order")
ORDER_STEP = "find_or_create_order"
CARD_ROLES = ("last_message", "last_message_at", "last_writer", "unanswered")
RESPONSE_TIMES = ("elapsed", "working")


class OrderOptions(Schema):
    field = f.String(required=True, metadata={"expected": "the order's line field keeping the conversation"})
    process = f.String(load_default=None, metadata={"expected": "the new order's process"})
    status = f.String(load_default=None, metadata={"expected": "the new order's status"})
    closed = f.List(f.String(), load_default=list, metadata={"expected": "the statuses of a closed order"})
    name = f.String(load_default=None, metadata={"expected": "the new order's name"})
    responsible = f.String(load_default=None, metadata={"expected": "the new order's responsible user"})
    fields = f.Dict(keys=f.String(), load_default=dict, metadata={"expected": "order fields written when it is made"})


class ResponseOptions(Schema):
    metric = f.String(required=True, metadata={"expected": "the metric a manager's answer time is recorded as"})
    dimensions = f.Dict(keys=f.String(), values=f.Raw(allow_none=True), load_default=dict,
                        metadata={"expected": "a mapping of dimension names to texts"})
    time = f.String(load_default="elapsed", validate=validate.OneOf(RESPONSE_TIMES),
                    metadata={"expected": "elapsed (every second) or working (the rule calendar's hours only)"})


class Options(Schema):
    by = f.String(required=True, validate=validate.OneOf(FIND_BY), metadata={"expected": " or ".join(FIND_BY)})
    value = f.String(required=True, metadata={"expected": "the phone, email or sender to match (a template)"})
    name = f.String(load_default=None, metadata={"expected": "the new contact's name"})
    fields = f.Dict(keys=f.String(), load_default=dict,
                    metadata={"expected": "a mapping of contact field name to value"})
    field = f.String(load_default=None, metadata={"expected": "the contact field keeping the inbox sender"})
    link = f.Boolean(load_default=True, metadata={"expected": "true or false"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})
    kind = f.String(load_default="contact", validate=validate.OneOf(KINDS), metadata={"expected": "contact or order"})
    order = f.Nested(OrderOptions, load_default=None, metadata={"expected": "{field, process, status, closed, name, …}"})
    card = f.Dict(keys=f.String(validate=validate.OneOf(CARD_ROLES)), values=f.String(), load_default=dict,
                  metadata={"expected": "{last_message, last_message_at, last_writer, unanswered: field name}"})
    writers = f.Dict(keys=f.String(validate=validate.OneOf(("client", "manager"))), values=f.String(),
                     load_default=dict, metadata={"expected": "{client: word, manager: word}"})
    conversation = f.String(load_default=None, metadata={"expected": "the conversation id (default: the event's)"})
    direction = f.String(load_default=None, metadata={"expected": "incoming or outgoing (default: data.direction)"})
    message_id = f.String(load_default=None, metadata={"expected": "the message id (default: data.message_id)"})
    at = f.String(load_default=None, metadata={"expected": "the message's time (default: the event's)"})
    text = f.String(load_default=None, metadata={"expected": "the message text (default: data.text)"})
    response = f.Nested(ResponseOptions, load_default=None,
                        metadata={"expected": "{metric, dimensions, time}: a manager's answer time as a fact"})


def sender_field(options: dict[str, Any]) -> str | None:
    """by: inbox_sender — the field named, else the one `fields:` entry written as `value:` is."""
    if options.get("field"):
        return str(options["field"])
    same = [k for k, v in (options.get("fields") or {}).items() if str(v).strip() == str(options.get("value")).strip()]
    return same[0] if len(same) == 1 else None


def plan(ctx, options: dict) -> list:
    if options["kind"] == "order":
        return plan_order(ctx, options)
    value = " ".join(str(options["value"]).split())
    if not value:
        raise ValueError(f"find_or_create: value rendered empty: nothing to match by {options['by']}")
    args: dict[str, Any] = {"by": options["by"], "value": value}
    values = {k: v for k, v in options["fields"].items() if v not in (None, "")}
    if options["by"] == "inbox_sender":
        field = sender_field(options)
        if field is None:
            raise ValueError("find_or_create: by inbox_sender needs `field:` (the contact field keeping the "
                             "sender), or one `fields:` entry whose value is the same as `value:`")
        args["field"] = field
    name = " ".join(str(options["name"] or "").split())
    if name:
        args["name"] = name
    if values:
        args["fields"] = values
    # the event's record, when it is one of this CRM's (an inbox message's conversation is not), or
    # the record `entity:` names
    connection = options["connection"] or ctx.default_connection
    ref = ctx.entity_ref
    if options["link"] and ref["type"] in LINKABLE and (ctx.target or connection == ctx.event.connection):
        args["entity"] = ref
    return [ctx.step(NAME, options["connection"], **args)]


def plan_order(ctx, options: dict) -> list:
    """kind: order — one step that finds or makes the conversation's open order and keeps its card."""
    if not options["order"]:
        raise ValueError("find_or_create kind: order needs `order:` (at least its `field:`)")
    data, event = ctx.event.data, ctx.event
    direction = options["direction"] or data.get("direction") or "incoming"
    conversation = options["conversation"] or (event.entity.id if event.entity.type == "conversation" else "")
    if not str(conversation).strip():
        raise ValueError("find_or_create kind: order: no conversation (give `conversation:`; the event is not "
                         "an inbox message)")
    files = data.get("files") or []
    text = options["text"] if options["text"] is not None else (data.get("text") or "")
    if not text.strip() and files:   # a photo or a story reaction without words
        text = "📎 " + ", ".join(str(f.get("name") or f.get("type") or "файл") for f in files)
    args: dict[str, Any] = {
        "conversation": str(conversation).strip(), "direction": direction,
        "message_id": options["message_id"] or data.get("message_id") or event.id,
        "at": options["at"] or event.occurred_at, "text": text,
        "order": {k: v for k, v in options["order"].items() if v not in (None, "", [], {})},
        "card": dict(options["card"]), "writers": dict(options["writers"])}
    photos = [{"url": f["url"], "name": f.get("name")} for f in files
              if isinstance(f, dict) and f.get("type") == "image" and f.get("url")]
    if photos and direction == "incoming":   # the client's last photo, for «Фото замовлення» (save_order_photo)
        args["photo"] = {**photos[-1], "connection": event.connection}
    if options["response"]:
        args["response"] = response_fact(ctx, options["response"])
    value = " ".join(str(options["value"] or "").split())
    if direction == "incoming":
        if not value:
            raise ValueError(f"find_or_create: value rendered empty: nothing to match by {options['by']}")
        field = sender_field(options) if options["by"] == "inbox_sender" else None
        if options["by"] == "inbox_sender" and field is None:
            raise ValueError("find_or_create: by inbox_sender needs `field:` (the contact field keeping the "
                             "sender), or one `fields:` entry whose value is the same as `value:`")
        args["contact"] = {"by": options["by"], "value": value, "field": field,
                           "name": " ".join(str(options["name"] or "").split()) or None,
                           "fields": {k: v for k, v in options["fields"].items() if v not in (None, "")}}
    return [ctx.step(ORDER_STEP, options["connection"], **args)]


def response_fact(ctx, spec: dict) -> dict:
    """`response: {metric, dimensions, time}`: the fact a manager's answer records (the seconds since
    the first client message it answers; `time: working`: only those in the rule calendar's working
    hours, the calendar carried with the step), checked as `record`'s metric and dimensions are."""
    from rules import record
    loaded = record.Options().load({"metric": spec.get("metric"), "dimensions": spec.get("dimensions") or {}})
    dims = {k: "" if v is None else str(v) for k, v in loaded["dimensions"].items()}
    if "reply" in dims:
        raise ValueError("response: the dimension `reply` is the step's own (first or next)")
    fact = {"metric": loaded["metric"], "dimensions": dims, "zone": ctx.calendar.timezone, "rule": ctx.rule.name,
            "event_id": ctx.event.id}
    if spec.get("time") == "working":
        fact["calendar"] = ctx.calendar.to_config()
    return fact


def recorded_metrics(rules: list) -> dict[str, set[str]]:
    """The metrics find_or_create kind: order records (`response:`) → their dimensions, for reports."""
    found: dict[str, set[str]] = {}
    for rule, spec, options in each_action(rules):
        response = options.get("response") if spec.verb == NAME else None
        if isinstance(response, dict) and response.get("metric"):
            dims = response.get("dimensions")
            found.setdefault(str(response["metric"]), {"reply"}).update(dims if isinstance(dims, dict) else ())
    return found


def unsupported(rules: list, connections: Any, connectors: dict[str, Any]) -> list[ConfigError]:
    """At start-up: each find_or_create's CRM must be able to search by its `by:` (a client's FIND_BY),
    and by: inbox_sender must say which field keeps the sender. The CRM is the action's `connection:`,
    else the connections the rule's `on:` names."""
    errors: list[ConfigError] = []
    known = getattr(connections, "connections", None) or {}
    for rule, spec, options in each_action(rules):
        if spec.verb != NAME:
            continue
        by = options.get("by")
        where = f'rule "{rule.name}": find_or_create → '
        if by == "inbox_sender" and sender_field(options) is None:
            errors.append(ConfigError(rule.file, spec.line, where + "by: inbox_sender needs `field:` (the "
                                      "contact field keeping the sender) or one `fields:` entry whose value "
                                      "is the same as `value:`"))
        targets, named = action_targets(rule, options)
        if options.get("kind") == "order" and not isinstance(options.get("order"), dict):
            errors.append(ConfigError(rule.file, spec.line, where + "kind: order needs `order:` with at least "
                                      "its `field:` (the order's field keeping the conversation)"))
        for name in targets:
            conn = known.get(name)
            if conn is None or by not in FIND_BY:
                continue
            if options.get("kind") == "order" and not {"find_tasks", "process_id"} <= connectors[conn.type].Client.capabilities:
                errors.append(ConfigError(rule.file, spec.line, where + f"kind: order not supported for "
                                          f"{conn.type} (connection {name!r}); Planfix keeps orders as tasks"))
                continue
            can = connectors[conn.type].Client.FIND_BY
            if by not in can:
                hint = "" if named else "; name the CRM with connection:"
                errors.append(ConfigError(rule.file, spec.line, where + f"by: {by} not supported for "
                                          f"{conn.type} (connection {name!r}){hint}"))
    return errors
