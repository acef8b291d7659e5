"""Send one message to every recipient of a list (a bulk send), each at most once per campaign id.

    do:
      - send_bulk:
          connection: shop-viber            # a viber, telegram, turbosms or smsc connection
          campaign: "holidays-2026-12"      # the campaign id: a recipient gets it once, however often started
          file: lists/clients.csv           # a CSV (UTF-8, header row) under the configuration directory
          text: "{name}, з 31.12 по 2.01 ми не працюємо. Гарних свят!"
          opt_out_column: "не надсилати"    # optional: a column (a CRM field in the export) that opts a row out
          region: UA                        # SMS: how to read numbers written without a country code

Or a list from the CRM, each person in their own channel, outside quiet hours:

      - send_bulk:
          connection: quickstart-amo        # the CRM the list is read from
          campaign: "prices-2027"
          crm:                              # every page of the CRM's deals, each with its main contact
            stage: ["Постійний клієнт"]     # names or ids (one or a list); pipeline: to pick a pipeline
            tags: [vip]                     # amoCRM: every tag listed (Bitrix24 deals have none)
            fields: {"Місто": "Київ"}       # the deal's or the contact's field values
            active_within_days: 180         # changed in the last N days (inactive_for_days: not in N)
          channels:                         # the order of preference: the first the person has
            - {connection: quickstart-bot, field: "telegram chat id"}
            - {connection: shop-viber, field: "viber id"}
            - {connection: sms-ua, field: phone}
            - {connection: office-mail, field: email}
          quiet_hours: {from: "21:00", to: "09:00", zone: Europe/Kyiv, zone_field: "часовий пояс"}
          text: "{name}, з 1 січня ціни змінюються."

A row's fields are the contact's and the deal's custom fields by lower-cased name, and `name`,
`phone`, `email`, `contact`, `deal`, `deal_name`, `tags`. A person with no usable address in any
channel is listed as invalid. A person opted out in any of their channels gets nothing. One inside
the quiet hours of their zone (the `zone_field` value, else `zone`, else the channel connection's
`options → timezone`) is deferred to the window's end, counted "deferred for quiet hours".

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


class Channel(Schema):
    connection = fields.String(required=True, metadata={"expected": "a telegram, viber, turbosms, smsc or email connection"})
    field = fields.String(required=True, metadata={"expected": "the row's field holding the address (phone, email, …)"})


class CrmList(Schema):
    stage = fields.Raw(load_default=None, metadata={"expected": "a stage name or id, or a list of them"})
    pipeline = fields.String(load_default=None, metadata={"expected": "a pipeline (funnel) name or id"})
    tags = fields.List(fields.String(), load_default=None, metadata={"expected": "tags every deal must have"})
    values = fields.Dict(keys=fields.String(), load_default=None, data_key="fields",
                         metadata={"expected": "{field name: value}"})
    active_within_days = fields.Float(load_default=None, validate=validate.Range(min=0),
                                      metadata={"expected": "changed in the last N days"})
    inactive_for_days = fields.Float(load_default=None, validate=validate.Range(min=0),
                                     metadata={"expected": "not changed in the last N days"})


class Quiet(Schema):
    start = fields.String(required=True, data_key="from", validate=validate.Regexp(r"^([01]?\d|2[0-3]):[0-5]\d$"),
                          metadata={"expected": "HH:MM, when quiet hours begin"})
    end = fields.String(required=True, data_key="to", validate=validate.Regexp(r"^([01]?\d|2[0-3]):[0-5]\d$"),
                        metadata={"expected": "HH:MM, when they end"})
    zone = fields.String(load_default=None, metadata={"expected": "an IANA zone such as Europe/Kyiv"})
    zone_field = fields.String(load_default=None, metadata={"expected": "a row field holding the person's zone"})


class Options(Schema):
    connection = fields.String(required=True, metadata={
        "expected": "a viber, telegram, turbosms or smsc connection (with crm: the CRM the list is read from)"})
    campaign = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"),
                             metadata={"expected": "a campaign id: 1-64 of A-Z, a-z, 0-9, _ . : -"})
    text = fields.String(required=True, metadata={"expected": "the message ({column} is the recipient's value)"})
    file = fields.String(load_default=None, metadata={"expected": "a CSV file under the configuration directory"})
    recipients = fields.List(fields.Raw(), load_default=None,
                             metadata={"expected": "rows ({phone: …, name: …}) or addresses, instead of file"})
    crm = fields.Nested(CrmList, load_default=None, metadata={"expected": "a list filtered from the CRM"})
    channels = fields.List(fields.Nested(Channel), load_default=None, validate=validate.Length(min=1),
                           metadata={"expected": "[{connection, field}, …] in the order of preference"})
    quiet_hours = fields.Nested(Quiet, load_default=None, metadata={"expected": "{from: HH:MM, to: HH:MM, zone, zone_field}"})
    subject = fields.String(load_default=None, metadata={"expected": "the e-mail subject (an email channel)"})
    opt_out_column = fields.String(load_default=None, metadata={"expected": "a column whose yes/так/да/1 opts a row out"})
    region = fields.String(load_default="UA", validate=validate.Regexp(r"^[A-Za-z]{2}$"),
                           metadata={"expected": "a two-letter country code for SMS numbers without +"})

    @validates_schema
    def _one_source(self, data, **kwargs):
        if sum(data.get(k) is not None for k in ("file", "recipients", "crm")) != 1:
            raise ValidationError("give one of file:, recipients: or crm:", "file")
        if data.get("crm") is not None and not data.get("channels"):
            raise ValidationError("a list from the CRM needs channels: [{connection, field}, …]", "channels")


def plan(ctx, options: dict) -> list:
    text = str(options["text"]).strip()
    if not text:
        raise ValueError("the message is empty after rendering the template")
    quiet = options["quiet_hours"]
    if quiet is not None:
        quiet = {"from": quiet["start"], "to": quiet["end"], "zone": quiet["zone"], "zone_field": quiet["zone_field"]}
    crm = options["crm"]
    if crm is not None:
        crm = dict(crm)
        crm["fields"] = crm.pop("values", None)
        crm = {k: v for k, v in crm.items() if v is not None}
    return [ctx.step("send_bulk", options["connection"], campaign=options["campaign"], text=text,
                     file=options["file"], rows=options["recipients"], region=options["region"],
                     opt_out_column=options["opt_out_column"], crm=crm, channels=options["channels"],
                     quiet_hours=quiet, subject=options["subject"])]
