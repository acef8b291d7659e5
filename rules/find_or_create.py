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


class Options(Schema):
    by = f.String(required=True, validate=validate.OneOf(FIND_BY), metadata={"expected": " or ".join(FIND_BY)})
    value = f.String(required=True, metadata={"expected": "the phone, email or sender to match (a template)"})
    name = f.String(load_default=None, metadata={"expected": "the new contact's name"})
    fields = f.Dict(keys=f.String(), load_default=dict,
                    metadata={"expected": "a mapping of contact field name to value"})
    field = f.String(load_default=None, metadata={"expected": "the contact field keeping the inbox sender"})
    link = f.Boolean(load_default=True, metadata={"expected": "true or false"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})


def sender_field(options: dict[str, Any]) -> str | None:
    """by: inbox_sender — the field named, else the one `fields:` entry written as `value:` is."""
    if options.get("field"):
        return str(options["field"])
    same = [k for k, v in (options.get("fields") or {}).items() if str(v).strip() == str(options.get("value")).strip()]
    return same[0] if len(same) == 1 else None


def plan(ctx, options: dict) -> list:
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
        for name in targets:
            conn = known.get(name)
            if conn is None or by not in FIND_BY:
                continue
            can = connectors[conn.type].Client.FIND_BY
            if by not in can:
                hint = "" if named else "; name the CRM with connection:"
                errors.append(ConfigError(rule.file, spec.line, where + f"by: {by} not supported for "
                                          f"{conn.type} (connection {name!r}){hint}"))
    return errors
