"""Make a document (an invoice, an act, a contract) from a DOCX template, number it, convert it
to PDF, attach it to the record in its CRM, and send it to the client on request.

    do:
      - make_document: invoice-uk              # config/templates/documents/invoice-uk.docx
      - make_document:
          template: invoice-uk
          series: invoice                      # numbering: per series and year (default: the template's name)
          number_format: "{year}/{seq:03d}"    # «2027/015»; {yy}: 27
          language: uk                         # uk or ru: words, dates, VAT lines
          currency: UAH                        # UAH, RUB, USD, EUR
          vat: 20                              # percent; leave out for "Без ПДВ"
          vat_included: true                   # the prices hold the VAT (false: it is added on top)
          items:                               # rows; default one: the deal's name at its price
            - {name: "Ведення соцмереж", quantity: 1, unit: "послуга", price: "{{ entity.price }}"}
          # items: crm                         # …or the record's product rows in its CRM (amoCRM, Bitrix24)
          client: {name: "{{ entity.fields['Юр. назва'] }}", code: "{{ entity.fields['ЄДРПОУ'] }}"}
          company: {name: "ТОВ «Агенція»", code: "12345678", iban: "UA21…", signer: "О. Коваленко"}
          values: {basis: "Договір № {{ entity.fields['Договір'] }}"}   # anything else: values.basis
          file_name: "Рахунок {number}"        # {number}: the document's number ("/" becomes "-")
          pdf: true                            # false: the DOCX only (no LibreOffice needed)
          attach: true                         # to the record, as its CRM shows files (a note or comment with it)
          comment: "Рахунок № {number}"        # the note's text
          send: {connection: agency-bot, chat: "{{ entity.fields['Telegram'] }}", caption: "Ваш рахунок"}
          # or by e-mail, the file attached:
          # send: {connection: agency-mail, to: "{{ entity.contacts[0].emails[0] }}", subject: "Рахунок № {number}",
          #        text: "Добрий день! Рахунок у вкладенні."}

The document is dated the day of the event in the rule's calendar zone, and numbered once: a
retried job or a repeated webhook gets the number it was given first (documents/numbering.py).
Templates are checked at start-up: a value they use that documents do not make is reported at
its paragraph (docs/documents.md lists the values). `cli.py render-document` previews one.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from config.loader import ConfigError, did_you_mean, line_of

NAME = "make_document"
SHORTHAND = "template"
CLIENT_METHOD = "make_document"   # a pipeline step: refused at start-up where the client lacks a verb it REQUIRES
FROM_CRM = "crm"
NO_ROWS = {"planfix": "Planfix's REST API has no product rows (an account may keep them in a data tag, "
                      "аналитика, with fields of its own naming, which crmbridge does not read)"}
TEMPLATE_NAME = re.compile(r"^[\w][\w.-]*$")
RECORD_KEYS = ("id", "type", "name", "price", "fields", "stage", "pipeline", "responsible", "contacts",
               "companies", "company", "first_name", "last_name", "phones", "emails")


def _strings(value) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValidationError("expected a mapping of names to texts")


class Row(Schema):
    name = fields.Raw(required=True, metadata={"expected": "the row's name"})
    quantity = fields.Raw(load_default=1, metadata={"expected": "a number"})
    unit = fields.Raw(load_default="", metadata={"expected": "a unit such as послуга, год, шт."})
    price = fields.Raw(required=True, metadata={"expected": "a price"})


class Items(fields.Field):
    """The rows: a list of {name, quantity, unit, price}, or "crm": the record's product rows as
    its CRM keeps them (amoCRM: the list elements linked to the lead; Bitrix24: the deal's rows)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value == FROM_CRM:
            return FROM_CRM
        if not isinstance(value, list):
            raise ValidationError(f'expected a list of rows {{name, quantity, unit, price}}, or "{FROM_CRM}" '
                                  f"(the record's product rows in its CRM), found {value!r}")
        return Row(many=True).load(value)


class Send(Schema):
    """To the client: by Telegram (`chat`, `caption`) or by e-mail (`to`, `subject`, `text`)."""
    connection = fields.String(required=True, metadata={"expected": "a telegram or email connection name"})
    chat = fields.Raw(load_default=None, metadata={"expected": "a chat id or a template (telegram)"})
    caption = fields.String(load_default=None, metadata={"expected": "a caption (telegram)"})
    to = fields.Raw(load_default=None, metadata={"expected": "an e-mail address or a template (email)"})
    subject = fields.String(load_default=None, metadata={"expected": "the e-mail's subject"})
    text = fields.String(load_default=None, metadata={"expected": "the e-mail's text"})

    @validates_schema
    def _one_way(self, data, **kwargs):
        if (data.get("chat") is None) == (data.get("to") is None):
            raise ValidationError("expected either chat (telegram) or to (email), found "
                                  + ("both" if data.get("chat") is not None else "neither"), "send")


class Options(Schema):
    template = fields.String(required=True, validate=validate.Regexp(TEMPLATE_NAME),
                             metadata={"expected": "a template's name in config/templates/documents/"})
    series = fields.String(load_default=None, validate=validate.Regexp(r"^[\w.-]{1,40}$"),
                           metadata={"expected": "a series name (letters, digits, _ . -)"})
    number_format = fields.String(load_default="{year}/{seq:03d}", metadata={"expected": 'a pattern such as "{year}/{seq:03d}"'})
    number_start = fields.Integer(load_default=1, validate=validate.Range(min=1), metadata={"expected": "a number from 1"})
    language = fields.String(load_default="uk", validate=validate.OneOf(("uk", "ru")), metadata={"expected": "uk or ru"})
    currency = fields.String(load_default="UAH", validate=validate.OneOf(("UAH", "RUB", "USD", "EUR")),
                             metadata={"expected": "UAH, RUB, USD or EUR"})
    vat = fields.Raw(load_default=None, metadata={"expected": "a VAT rate in percent, e.g. 20"})
    vat_included = fields.Boolean(load_default=True, metadata={"expected": "true or false"})
    items = Items(load_default=None, metadata={"expected": 'a list of rows {name, quantity, unit, price}, or "crm"'})
    client = fields.Dict(load_default=dict, validate=_strings, metadata={"expected": "the buyer's requisites"})
    company = fields.Dict(load_default=dict, validate=_strings, metadata={"expected": "the seller's requisites"})
    values = fields.Dict(load_default=dict, validate=_strings, metadata={"expected": "a mapping of names to values"})
    file_name = fields.String(load_default=None, metadata={"expected": 'a file name pattern, e.g. "Рахунок {number}"'})
    pdf = fields.Boolean(load_default=True, metadata={"expected": "true or false"})
    attach = fields.Boolean(load_default=True, metadata={"expected": "true or false"})
    comment = fields.String(load_default=None, metadata={"expected": "the text of the note carrying the file"})
    send = fields.Nested(Send, load_default=None, metadata={"expected": "{connection, chat, caption}"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    entity = ctx.entity or {}
    items = options["items"]
    if items == FROM_CRM:   # read by the step, from the CRM, when it runs
        items = []
    elif items is None:   # one row: the deal itself at its price
        items = [{"name": entity.get("name") or "", "quantity": 1, "unit": "", "price": entity.get("price")}]
    zone = ZoneInfo(ctx.calendar.timezone)
    moment = (datetime.fromisoformat(ctx.event.occurred_at.replace("Z", "+00:00")) if ctx.event.occurred_at
              else ctx.now)   # the event's day: the same on every retry of the job
    record = json.loads(json.dumps({k: entity[k] for k in RECORD_KEYS if k in entity}, default=str))
    send = {k: v for k, v in options["send"].items() if v is not None} if options["send"] else None
    if send is not None:
        where = "chat" if "chat" in send else "to"
        send[where] = str(send[where]).strip()
        if not send[where]:
            raise ValueError(f"send: the {where} is empty after rendering the template")
    template = options["template"] if options["template"].endswith(".docx") else f"{options['template']}.docx"
    return [ctx.step(NAME, options["connection"], entity=ctx.entity_ref, template=template,
                     series=options["series"] or Path(template).stem, number_format=options["number_format"],
                     number_start=options["number_start"], language=options["language"],
                     currency=options["currency"], vat=options["vat"], vat_included=options["vat_included"],
                     items=[dict(i) for i in items], items_from_crm=options["items"] == FROM_CRM,
                     client=options["client"], company=options["company"],
                     values=options["values"], record=record, date=moment.astimezone(zone).date().isoformat(),
                     file_name=options["file_name"], pdf=options["pdf"], attach=options["attach"],
                     comment=options["comment"], send=send)]


def _rows_unreadable(rule, spec, opts: dict, known: dict, connectors: dict[str, Any]) -> list[ConfigError]:
    """`items: crm` aimed at a CRM whose client reads no product rows (Planfix): refused at start-up."""
    from rules._verb_support import action_targets
    errors = []
    for name in action_targets(rule, opts)[0]:
        conn = known.get(name)
        client = getattr(connectors.get(getattr(conn, "type", None)), "Client", None)
        if client is None or "product_rows" in client.capabilities:
            continue
        errors.append(ConfigError(rule.file, line_of(opts, "items", spec.line),
                                  f'rule "{rule.name}": make_document → items: expected a list of rows for '
                                  f"{conn.type} (connection {name!r}), found crm: {NO_ROWS.get(conn.type, 'its client reads no product rows')}"))
    return errors


def load_templates(rules: list, config_dir: Path, connections: Any = None,
                   connectors: dict[str, Any] | None = None) -> tuple[list[ConfigError], list[str]]:
    """At start-up: each make_document's template is there and uses only values documents make
    (problems at the template's paragraph, or at the rule's line), and its `send:` names a
    connection that can send a document; warnings besides (no PDF here)."""
    specs = [(rule, spec) for rule in rules for spec in (*rule.actions, *rule.otherwise) if spec.verb == NAME]
    if not specs:
        return [], []
    from documents import render   # docxtpl is imported only when a configuration makes documents
    errors: list[ConfigError] = []
    checked: dict[Path, list[tuple[int, str]]] = {}
    wants_pdf = False
    folder = config_dir / render.TEMPLATE_DIR
    known = getattr(connections, "connections", None) or {}
    for rule, spec in specs:
        opts = spec.options if isinstance(spec.options, dict) else {}
        send = opts.get("send") if isinstance(opts.get("send"), dict) else {}
        conn = known.get(send.get("connection")) if isinstance(send.get("connection"), str) else None
        client = getattr((connectors or {}).get(getattr(conn, "type", None)), "Client", None)
        can = getattr(client, "capabilities", frozenset())
        if conn is not None and client is not None and not can & {"send_document", "send_email"}:
            errors.append(ConfigError(rule.file, line_of(send, "connection", spec.line),
                                      f'rule "{rule.name}": make_document → send → connection: expected a '
                                      f"connection that sends documents (telegram or email), found {conn.name!r} "
                                      f"({conn.type})"))
        elif conn is not None and client is not None:
            wants = "to" if "send_email" in can else "chat"
            if send.get(wants) in (None, ""):
                errors.append(ConfigError(rule.file, line_of(send, "connection", spec.line),
                                          f'rule "{rule.name}": make_document → send: expected `{wants}:` for '
                                          f"{conn.name!r} ({conn.type}), found "
                                          f"{', '.join(k for k in ('chat', 'to') if k in send) or 'neither'}"))
        if opts.get("items") == FROM_CRM:
            errors.extend(_rows_unreadable(rule, spec, opts, known, connectors or {}))
        name = opts.get("template")
        if not isinstance(name, str) or not TEMPLATE_NAME.match(name):
            continue   # the options' own check reports it
        wants_pdf = wants_pdf or opts.get("pdf", True) is not False
        path = folder / (name if name.endswith(".docx") else f"{name}.docx")
        if not path.is_file():
            there = sorted(p.stem for p in folder.glob("*.docx")) if folder.is_dir() else []
            errors.append(ConfigError(rule.file, spec.line, f'rule "{rule.name}": make_document → template: '
                                      f"expected a file {render.TEMPLATE_DIR / path.name} in {str(config_dir)!r}, "
                                      f"found none{did_you_mean(path.stem, there)}"))
            continue
        if path not in checked:
            checked[path] = render.check_template(path)
            errors.extend(ConfigError(str(path), at, message) for at, message in checked[path])
    warnings = []
    if wants_pdf and render.soffice() is None:
        warnings.append("make_document: PDF conversion is unavailable: LibreOffice is not installed (no soffice "
                        "on PATH); documents with pdf: true will fail until Debian's libreoffice-writer-nogui "
                        "is installed (or set pdf: false for DOCX only)")
    return errors, warnings
