"""Complete what was typed into a field from a catalog: the first letters of a surname become
the full name of the one entry they start (amoCRM: a list, «Списки»).

    on: {event: field.changed, field: ["ФИО блогера 1", "ФИО блогера 2"]}
    do:
      - lookup_field:
          field: ["ФИО блогера 1", "ФИО блогера 2"]   # one name, or several: those that changed
          catalog: "Блогеры"                           # the list as the CRM names it, or its id
          match: starts_with                           # or word_starts_with ("Имя Фамилия" lists)
          min_length: 3                                # fewer letters typed: nothing is done
          ambiguous: "Несколько блогеров на «{value}»: {matches}"   # optional note texts
          not_found: "В базе нет блогера на «{value}»"

One entry starts with the text: the field gets its full name. Several: a note lists them and the
field stays as typed; none: a note says so. Any case, ё as е. A value that already is an entry's
full name is left alone: the CRM announcing crmbridge's own write does not start a second lookup.
The note texts may use {field}, {value}, {catalog} and {matches}.
"""
from marshmallow import Schema, fields, validate

from connectors.base import LOOKUP_MATCHES

NAME = "lookup_field"
CLIENT_METHOD = "lookup_field"  # a pipeline step: refused at start-up where the client lacks a verb it REQUIRES
_NO_CATALOGS = "has no catalogs (lists) to look names up in here; amoCRM's lists («Списки») can be"
REFUSED = {"bitrix24": "Bitrix24 " + _NO_CATALOGS, "planfix": "Planfix " + _NO_CATALOGS}
SHORTHAND = "field"


class Options(Schema):
    field = fields.Raw(required=True, metadata={"expected": "a field name, or a list of them"})
    catalog = fields.String(required=True, metadata={"expected": "the catalog (list) name or id"})
    match = fields.String(load_default="starts_with", validate=validate.OneOf(LOOKUP_MATCHES),
                          metadata={"expected": " or ".join(LOOKUP_MATCHES)})
    min_length = fields.Integer(load_default=3, validate=validate.Range(min=1),
                                metadata={"expected": "how many letters must be typed, 1 or more"})
    ambiguous = fields.String(load_default=None, metadata={"expected": "the note when several entries match"})
    not_found = fields.String(load_default=None, metadata={"expected": "the note when no entry matches"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    names = options["field"] if isinstance(options["field"], list) else [options["field"]]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"lookup_field: field: expected a field name or a list of them, found {options['field']!r}")
    changed = (ctx.event.data or {}).get("changed")
    notes = {k: options[k] for k in ("ambiguous", "not_found") if options[k] is not None}
    steps = []
    for name in names:
        if isinstance(changed, dict) and name not in changed:
            continue    # field.changed names what changed: the other fields were looked up before
        value = (ctx.entity.get("fields") or {}).get(name)
        value = " ".join(str(value[0] if isinstance(value, list) and value else value or "").split())
        if sum(ch.isalpha() for ch in value) < options["min_length"]:
            continue
        steps.append(ctx.step("lookup_field", options["connection"], entity=ctx.entity_ref, field=name,
                              value=value, catalog=options["catalog"], match=options["match"], **notes))
    return steps
