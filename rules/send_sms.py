"""Send an SMS through a `turbosms` or `smsc` connection. `to` and `text` are Jinja2 templates.

    do:
      - send_sms:
          connection: sms-ua                          # a turbosms or smsc connection
          to: "{{ entity.main_contact.phone }}"       # any way a person writes it: 067 123 45 67, +380…
          text: "Ваше замовлення №{{ entity.id }} готове. Чекаємо вас!"
          region: UA                                  # how to read a number without a country code

The number is normalised to E.164 with phonenumbers (a number that is not a valid mobile number
stops the step with the reason). The text's encoding and parts are computed when the rule plans, and
shown in dry runs and simulations: GSM-7 carries 160 characters in one part and 153 a part when
split; any character outside it (Cyrillic, emoji) makes the whole text UCS-2: 70 in one part, 67 a
part. A text of more than `max_parts` parts (default 6) is refused.

The SMS is sent under an id of our own derived from the step. A send that got no clear answer is
looked up by that id where the provider allows it (SMSC) and recorded done if the provider has it;
otherwise (TurboSMS) it is parked in the dead letters for a person: an SMS is never resent blindly.
"""
from marshmallow import Schema, fields, validate

from sms_text import BadNumber, e164, segments

NAME = "send_sms"
CLIENT_METHOD = "send_sms"   # a pipeline step: refused at start-up for a connection whose client cannot send an SMS


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a turbosms or smsc connection name"})
    to = fields.Raw(required=True, metadata={"expected": "a phone number or a template"})
    text = fields.String(required=True, metadata={"expected": "the SMS text (a template)"})
    region = fields.String(load_default="UA", validate=validate.Regexp(r"^[A-Za-z]{2}$"),
                           metadata={"expected": "a two-letter country code (UA, RU, KZ…) for numbers written without +"})
    max_parts = fields.Integer(load_default=6, validate=validate.Range(min=1, max=10),
                               metadata={"expected": "the most parts a text may take, 1-10"})


def plan(ctx, options: dict) -> list:
    text = str(options["text"]).strip()
    if not text:
        raise ValueError("the SMS text is empty after rendering the template")
    try:
        phone = e164(options["to"], options["region"])
    except BadNumber as exc:
        raise ValueError(str(exc)) from None
    found = segments(text)
    if found.parts > options["max_parts"]:
        raise ValueError(f"the SMS would take {found.parts} parts ({found.describe()}); max_parts is {options['max_parts']}")
    return [ctx.step("send_sms", options["connection"], phone=phone, text=text, encoding=found.encoding,
                     length=found.length, parts=found.parts)]
