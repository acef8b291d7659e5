"""A message from a known contact attached to the contact's most recently active open deal (D8, E1).

    on: {event: message.received, connection: client-bot}
    do:
      - attach_to_deal:
          connection: portal-b24              # the CRM (the event's own is a chat)
          by: inbox_sender                    # how the contact is found: phone, email or inbox_sender
          field: "Telegram ID"                # (inbox_sender) the contact field keeping the sender
          value: "{{ data.from.id }}"
          text: "Telegram, {{ data.from.name }}: {{ data.text }}"
          none_open: contact_note             # no open deal: contact_note (default), new_deal or skip
          deal_title: "Обращение: {{ data.from.name }}"   # (new_deal) the new deal's title
          deal_fields: {"Джерело заявки": "{{ data.source.door }}", UTM_SOURCE: "{{ data.utm.utm_source }}"}
                                              # (new_deal) fields of the new deal, by name or code

`contact: "{{ … }}"` names the contact by id instead of `by`/`value`. **Most recently active**: of
the contact's open deals (every contact the search matched), the one modified last (Bitrix24
`DATE_MODIFY`, amoCRM `updated_at` of the contact's leads not won or lost, Planfix `dateOfLastUpdate`
of the contact's tasks in an active status, in the connection's `options.deals.process`), ties broken by the highest id; a deal with no modification time counts as the
oldest. The text goes into that deal's timeline (`add_note`). With no open deal: a note on the
contact (the oldest matched), a new deal linked to the contact with the note on it, or nothing.
`deal_fields` are written on a new deal when it is made (values that render empty are left out):
the request's source and UTM tags into the deal's own fields; a deal that exists keeps its own
(the first touch), and the note tells the new request's source.
An unknown sender is left alone (creating contacts is find_or_create's job); the step's result
says so. The deal chosen is recorded with the step, so a retried step attaches to the same deal.
"""
from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, validate, validates_schema
from marshmallow import fields as f

from connectors.base import FIND_BY

NAME = "attach_to_deal"
CLIENT_METHOD = "attach_to_deal"   # a pipeline step: refused at start-up where the client lacks a verb it REQUIRES
NONE_OPEN = ("contact_note", "new_deal", "skip")


class Options(Schema):
    text = f.String(required=True, metadata={"expected": "the note's text (a template)"})
    by = f.String(load_default=None, validate=validate.OneOf(FIND_BY), metadata={"expected": " or ".join(FIND_BY)})
    value = f.String(load_default=None, metadata={"expected": "the phone, email or sender (a template)"})
    field = f.String(load_default=None, metadata={"expected": "the contact field keeping the inbox sender"})
    contact = f.String(load_default=None, metadata={"expected": "the contact's id (a template)"})
    none_open = f.String(load_default="contact_note", validate=validate.OneOf(NONE_OPEN),
                         metadata={"expected": " or ".join(NONE_OPEN)})
    deal_title = f.String(load_default="Новое обращение", metadata={"expected": "the new deal's title (a template)"})
    deal_fields = f.Dict(keys=f.String(), load_default=dict,
                         metadata={"expected": "the new deal's fields: {field name or code: value (a template)}"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})

    @validates_schema
    def _who(self, data: dict, **_) -> None:
        if bool(data.get("contact")) == bool(data.get("by")):
            raise ValidationError("name the contact either by `contact:` (an id) or by `by:` and `value:`")
        if data.get("by") and not data.get("value"):
            raise ValidationError("`by:` needs `value:` (the phone, email or sender to match)")
        if data.get("by") == "inbox_sender" and not data.get("field"):
            raise ValidationError("by: inbox_sender needs `field:` (the contact field keeping the sender)")


def plan(ctx, options: dict) -> list:
    text = str(options["text"]).strip()
    if not text:
        raise ValueError("attach_to_deal: text rendered empty: nothing to attach")
    args: dict[str, Any] = {"text": text, "none_open": options["none_open"]}
    if options["contact"]:
        contact = str(options["contact"]).strip()
        if not contact:
            raise ValueError("attach_to_deal: contact rendered empty")
        args["contact"] = contact
    else:
        value = " ".join(str(options["value"]).split())
        if not value:
            raise ValueError(f"attach_to_deal: value rendered empty: nothing to match by {options['by']}")
        args.update(by=options["by"], value=value, field=options["field"])
    if options["none_open"] == "new_deal":
        args["deal_title"] = " ".join(str(options["deal_title"]).split()) or "Новое обращение"
        fields = {str(k): v.strip() if isinstance(v, str) else v for k, v in (options["deal_fields"] or {}).items()}
        fields = {k: v for k, v in fields.items() if v not in (None, "", [])}
        if fields:
            args["deal_fields"] = fields
    return [ctx.step(NAME, options["connection"], **args)]
