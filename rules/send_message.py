"""Send a Telegram message, with inline buttons if given. The text is a Jinja2 template.

    do:
      - send_message:
          connection: agency-bot          # a telegram connection
          chat: "-1001234567890"          # a chat id, or a template such as "{{ entity.fields['Telegram chat'] }}"
          text: |
            Нова угода: {{ entity.name }} ({{ entity.price }} грн)
          buttons:                        # optional rows of buttons
            - [{text: "Approve", data: "approve"}, {text: "Revise", data: "revise"}]
"""
from marshmallow import Schema, fields

from rules.templates import known_parse_mode

NAME = "send_message"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a telegram connection name"})
    chat = fields.Raw(required=True, metadata={"expected": "a chat id or a template"})
    text = fields.String(required=True, metadata={"expected": "the message text (a template)"})
    buttons = fields.List(fields.List(fields.Dict()), load_default=None,
                          metadata={"expected": "rows of buttons, e.g. [[{text: OK, data: ok}]]"})
    parse_mode = fields.String(load_default=None, validate=known_parse_mode,
                               metadata={"expected": "HTML or MarkdownV2 (values the text inserts are escaped for it)"})


def plan(ctx, options: dict) -> list:
    chat = str(options["chat"]).strip()
    if not chat:
        raise ValueError("the chat is empty after rendering the template")
    return [ctx.step("send_message", options["connection"], chat=chat, text=options["text"],
                     buttons=options["buttons"], parse_mode=options["parse_mode"])]
