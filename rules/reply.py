"""Answer a client through the social inbox (umnico), in the conversation they wrote in.

    on: {event: message.received, connection: shop-inbox}
    do:
      - reply:
          connection: shop-inbox            # an inbox connection
          text: "Вітаємо! Дякуємо, що написали 🎂"
          files: [{type: image, url: "https://…/price.jpg"}]   # optional

    # from a CRM event: the conversation id kept on the order
    on: {event: stage.changed, stage: "Привітання"}
    do:
      - reply: {connection: shop-inbox, conversation: "{{ entity.fields['Розмова'] }}",
                text: "Вітаємо! …"}

`conversation` defaults to the event's own conversation (a `message.received` from the inbox),
and then the channel the client wrote through is answered without looking it up.
"""
from marshmallow import Schema, fields, validate

NAME = "reply"
SHORTHAND = "text"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "an inbox connection name"})
    text = fields.String(required=True, metadata={"expected": "the reply text (a template)"})
    conversation = fields.Raw(load_default=None, metadata={"expected": "a conversation id or a template"})
    files = fields.List(fields.Dict(), load_default=None,
                        metadata={"expected": "a list of files, e.g. [{type: image, url: https://…}]"})
    on_uncertain = fields.String(load_default="park", validate=validate.OneOf(("park", "resend")),
                                 metadata={"expected": "park (a person decides) or resend"})


def plan(ctx, options: dict) -> list:
    own = ctx.event.entity.type == "conversation" and ctx.event.connection == options["connection"]
    conversation = str(options["conversation"] or "").strip() or (ctx.event.entity.id if own else "")
    if not conversation:
        raise ValueError("no conversation to reply in: give `conversation:` (the event is not an inbox message)")
    if not options["text"].strip() and not options["files"]:
        raise ValueError("the reply is empty after rendering the template")
    args = {"conversation": conversation, "text": options["text"], "attachments": options["files"]}
    route = (ctx.event.data.get("reply") or {}) if own and conversation == ctx.event.entity.id else {}
    if route.get("source"):  # the channel the client wrote through: no lookup needed
        args["source"] = route["source"]
    if options["on_uncertain"] == "resend":   # as send_message's: parked for a person by default
        args["on_uncertain"] = "resend"
    return [ctx.step("reply", options["connection"], **args)]
