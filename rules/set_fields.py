"""Write fields of the event's entity, by name as the CRM shows them (or id).

    do:
      - set_fields:
          "Payment date": "{{ now.date().isoformat() }}"
          "Closing documents received": true
"""
from marshmallow import Schema, fields as f

NAME = "set_fields"
SHORTHAND = "fields"


class Options(Schema):
    fields = f.Dict(keys=f.String(), required=True,
                         metadata={"expected": "a mapping of field name to value"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    return [ctx.step("set_fields", options["connection"], entity=ctx.entity_ref, fields=options["fields"])]
