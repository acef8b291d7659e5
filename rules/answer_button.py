"""Answer a Telegram button press (the spinner stops; an optional short notice shows).

    on: {event: button.pressed, button: approve}
    do:
      - answer_button: "Дякуємо! / Thank you!"
      - edit_buttons: []                # remove the keyboard, or give new rows
"""
from marshmallow import Schema, fields

NAME = "answer_button"
SHORTHAND = "text"


class Options(Schema):
    text = fields.String(load_default=None, metadata={"expected": "a short notice (up to 200 characters)"})


def plan(ctx, options: dict) -> list:
    callback = ctx.event.data.get("callback_id")
    if not callback:
        raise ValueError("answer_button needs a button.pressed event")
    return [ctx.step("answer_button", ctx.event.connection, callback_id=callback, text=options["text"])]
