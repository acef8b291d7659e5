"""Ask in Telegram for a choice about this record: a message whose buttons are bound to it.

    on: {event: stage.changed, entity: task, stage: "Завершена"}
    do:
      - ask_approval:
          connection: agency-bot                       # a telegram connection with options.link
          chat: "{{ entity.fields['Telegram чат'] }}"  # an id, a template, or a name from options.chats
          text: "Роботу «{{ entity.name }}» виконано. Перегляньте, будь ласка:"
          buttons:                                     # one per choice, one per row
            - {text: "✅ Затвердити роботу", choice: approve}
            - {text: "✏️ Надіслати на доопрацювання", choice: revise}
          approvers: chat_members                      # or staff, or [123456789, "@olena_pm"]

A press comes back as `button.pressed` with `button: approve` about this record (the task,
read fresh from the CRM, is `entity`; CRM actions act on it), so the rules that act on the
choice are ordinary rules: `on: {event: button.pressed, button: approve}`. The callback data is
`a1.<choice>.t<number>.<nonce>.<mac>` (≤ 64 bytes): an HMAC over the choice, the record, the
chat and a nonce per message, keyed with the bot's secret, so it can be neither forged nor
carried to another task or chat. Only `approvers` may press; the first press that a rule acts
on is the choice (later presses and redelivered updates are answered "already chosen"), and the
keyboard is then replaced by the choice and who made it. The nonce is derived from the event
and the rule, so a re-run of the same event sends the same buttons.
"""
import hashlib
import re

from marshmallow import Schema, ValidationError, fields, validate

from rules.templates import known_parse_mode

NAME = "ask_approval"
CHOICE = r"[a-z0-9_]{1,16}"


def _choices(value: list) -> None:
    for item in value:
        if not isinstance(item, dict) or set(item) != {"choice", "text"}:
            raise ValidationError(f"expected {{text: '✅ …', choice: approve}}, found {item!r}")
        if not re.fullmatch(CHOICE, str(item["choice"])):
            raise ValidationError(f"choice {item['choice']!r}: 1-16 of a-z, 0-9, _")
    if len({str(i["choice"]) for i in value}) != len(value):
        raise ValidationError("two choices have the same name")


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a telegram connection name"})
    chat = fields.Raw(required=True, metadata={"expected": "a chat id, a chat name or a template"})
    text = fields.String(required=True, metadata={"expected": "the message text (a template)"})
    buttons = fields.List(fields.Dict(), required=True,
                          validate=[validate.Length(min=1, max=6), _choices],
                          metadata={"expected": "1-6 buttons such as [{text: '✅ Затвердити', choice: approve}]"})
    approvers = fields.Raw(load_default="chat_members",
                           metadata={"expected": "chat_members, staff, or a list of Telegram user ids and @usernames"})
    parse_mode = fields.String(load_default=None, validate=known_parse_mode,
                               metadata={"expected": "HTML or MarkdownV2 (values the text inserts are escaped for it)"})


def plan(ctx, options: dict) -> list:
    chat = str(options["chat"]).strip()
    if not chat or chat == "None":
        raise ValueError("the chat is empty after rendering the template (is the group linked? /link <number>)")
    ref = ctx.entity_ref
    record = {"connection": ctx.default_connection, "type": ref["type"], "id": str(ref["id"])}
    seed = f"{ctx.event.id}|{ctx.rule.id}|{chat}|{options['text']}"
    nonce = hashlib.sha256(seed.encode()).hexdigest()[:6]
    approvers = options["approvers"]
    if isinstance(approvers, list):
        approvers = [str(a) for a in approvers]
    return [ctx.step("send_approval", options["connection"], chat=chat, text=options["text"],
                     choices=[{"choice": str(c["choice"]), "text": str(c["text"])} for c in options["buttons"]],
                     record=record, nonce=nonce, approvers=approvers, parse_mode=options["parse_mode"])]
