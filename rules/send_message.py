"""Send a Telegram (or Viber) message, with buttons if given. The text is a Jinja2 template.

    do:
      - send_message:
          connection: agency-bot          # a telegram connection
          chat: "-1001234567890"          # a chat id, or a template such as "{{ entity.fields['Telegram chat'] }}"
          text: |
            Нова угода: {{ entity.name }} ({{ entity.price }} грн)
          buttons:                        # optional rows of buttons
            - [{text: "Approve", data: "approve"}, {text: "Revise", data: "revise"}]
          on_uncertain: park              # or resend: see below

A message that got no clear answer from Telegram (a 5xx, a timeout, a lost connection after it
left) may or may not have been sent, and Telegram cannot be asked: by default the step is parked
in the dead letters for a person to check (`on_uncertain: park`); `on_uncertain: resend` sends it
again instead, when a second copy is better than none.
"""
from marshmallow import Schema, fields, validate

from rules.templates import known_parse_mode

NAME = "send_message"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a telegram or viber connection name"})
    chat = fields.Raw(required=True, metadata={"expected": "a chat id or a template"})
    text = fields.String(required=True, metadata={"expected": "the message text (a template)"})
    buttons = fields.List(fields.List(fields.Dict()), load_default=None,
                          metadata={"expected": "rows of buttons, e.g. [[{text: OK, data: ok}]]"})
    parse_mode = fields.String(load_default=None, validate=known_parse_mode,
                               metadata={"expected": "HTML or MarkdownV2 (values the text inserts are escaped for it)"})
    on_uncertain = fields.String(load_default="park", validate=validate.OneOf(("park", "resend")),
                                 metadata={"expected": "park (a person decides) or resend"})


def plan(ctx, options: dict) -> list:
    chat = str(options["chat"]).strip()
    if not chat:
        raise ValueError("the chat is empty after rendering the template")
    # a message that got no clear answer (a 5xx, no answer) cannot be read back: it is parked for a
    # person, unless the rule says a second copy is better than none (`on_uncertain: resend`)
    resend = {"on_uncertain": "resend"} if options["on_uncertain"] == "resend" else {}
    return [ctx.step("send_message", options["connection"], chat=chat, text=options["text"],
                     buttons=options["buttons"], parse_mode=options["parse_mode"], **resend)]
