"""Replace the buttons under the message whose button was pressed (an empty list removes them).

    do:
      - edit_buttons: [[{text: "✅ Approved by {{ actor.name }}", data: "noop"}]]
"""
from marshmallow import Schema, fields

NAME = "edit_buttons"
SHORTHAND = "buttons"


class Options(Schema):
    buttons = fields.List(fields.List(fields.Dict()), load_default=list,
                          metadata={"expected": "rows of buttons, or [] to remove them"})


def plan(ctx, options: dict) -> list:
    chat = (ctx.event.data.get("chat") or {}).get("id")
    message_id = ctx.event.data.get("message_id")
    if chat is None or message_id is None:
        raise ValueError("edit_buttons needs a button.pressed event on a chat message")
    return [ctx.step("edit_buttons", ctx.event.connection, chat=chat, message_id=message_id,
                     buttons=options["buttons"] or None)]
