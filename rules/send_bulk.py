"""Send one message to every recipient of a list (a bulk send), each at most once per campaign id.

    do:
      - send_bulk:
          connection: shop-viber            # a viber, telegram, turbosms or smsc connection
          campaign: "holidays-2026-12"      # the campaign id: a recipient gets it once, however often started
          file: lists/clients.csv           # a CSV (UTF-8, header row) under the configuration directory
          text: "{name}, з 31.12 по 2.01 ми не працюємо. Гарних свят!"
          opt_out_column: "не надсилати"    # optional: a column (a CRM field in the export) that opts a row out
          region: UA                        # SMS: how to read numbers written without a country code

The list's address column is `address`, `phone`, `viber`, `chat` or `телефон`; `{column}` in the text
is replaced by that row's value (single braces: the text is also a Jinja2 template of the event, as
every option). `recipients: [...]` (rows or addresses) may stand instead of `file:`.

Starting it queues one job per recipient (no loop that sleeps): each job checks the opt-outs (the
connection's opt-out set in Redis, `<prefix>optout:<connection>`, fed by Viber unsubscribes and
STOP/«стоп» replies and by `cli.py bulk opt-out`; and the opt-out column), then sends through
the connection's client, whose shared limiter keeps the vendor's rate limit. A message that may have
been sent and got no clear answer is never resent (`uncertain` in the status). `cli.py bulk
status <id>` shows the progress: sent, opted out, failed and why, uncertain, pending.
"""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

NAME = "send_bulk"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a viber, telegram, turbosms or smsc connection"})
    campaign = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"),
                             metadata={"expected": "a campaign id: 1-64 of A-Z, a-z, 0-9, _ . : -"})
    text = fields.String(required=True, metadata={"expected": "the message ({column} is the recipient's value)"})
    file = fields.String(load_default=None, metadata={"expected": "a CSV file under the configuration directory"})
    recipients = fields.List(fields.Raw(), load_default=None,
                             metadata={"expected": "rows ({phone: …, name: …}) or addresses, instead of file"})
    opt_out_column = fields.String(load_default=None, metadata={"expected": "a column whose yes/так/да/1 opts a row out"})
    region = fields.String(load_default="UA", validate=validate.Regexp(r"^[A-Za-z]{2}$"),
                           metadata={"expected": "a two-letter country code for SMS numbers without +"})

    @validates_schema
    def _one_source(self, data, **kwargs):
        if (data.get("file") is None) == (data.get("recipients") is None):
            raise ValidationError("give either file: or recipients:", "file")


def plan(ctx, options: dict) -> list:
    text = str(options["text"]).strip()
    if not text:
        raise ValueError("the message is empty after rendering the template")
    return [ctx.step("send_bulk", options["connection"], campaign=options["campaign"], text=text,
                     file=options["file"], rows=options["recipients"], region=options["region"],
                     opt_out_column=options["opt_out_column"])]
