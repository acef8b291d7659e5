"""Add a note (amoCRM) or comment (Planfix, Bitrix24 timeline) to the event's entity.

    do:
      - add_note: "Approved by {{ actor.name }}"
"""
from marshmallow import Schema, fields

NAME = "add_note"
SHORTHAND = "text"


class Options(Schema):
    text = fields.String(required=True, metadata={"expected": "the note text (a template)"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    return [ctx.step("add_note", options["connection"], entity=ctx.entity_ref, text=options["text"])]
