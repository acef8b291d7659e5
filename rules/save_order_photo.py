"""Save the last photo the client sent in an order into it, as a comment carrying the file (playbook B3 «Фото замовлення»).

    on: {event: stage.changed, entity: task, stage: "Фото замовлення", undo: false}
    do:
      - save_order_photo: "📷 Фото замовлення від клієнта"     # the comment's text

The photo is the latest image attachment of the client's messages in this order, which
`find_or_create: {kind: order}` keeps as they come (the order's card state); it is downloaded
through the inbox connection that received it (only from its allowed file hosts, without the
inbox's credentials: docs/connectors/social-inbox.md) and uploaded to the order. `none:` what to do
when the client sent no photo: `skip` (default: the step says so) or `fail`.
"""
from marshmallow import Schema, validate
from marshmallow import fields as f

NAME = "save_order_photo"
SHORTHAND = "text"
CLIENT_METHOD = NAME  # rules/_verb_support.py: refused at start-up where a client cannot
REFUSED = {"amocrm": "orders are Planfix tasks kept by find_or_create kind: order",
           "bitrix24": "orders are Planfix tasks kept by find_or_create kind: order"}


class Options(Schema):
    text = f.String(load_default="📷 Фото замовлення від клієнта", metadata={"expected": "the comment's text"})
    none = f.String(load_default="skip", validate=validate.OneOf(("skip", "fail")), metadata={"expected": "skip or fail"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    return [ctx.step(NAME, options["connection"], entity=ctx.entity_ref, text=options["text"], none=options["none"])]
