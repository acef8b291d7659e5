"""Create a record in another pipeline and stage from the event's one (amoCRM leads).

    do:
      - copy_entity:
          pipeline: "Реализация"                  # name or id
          stage: "Тайминг"                        # name or id
          responsible: "{{ entity.fields['PR-менеджер'] }}"   # a user name or id; default: the same
          name: "{{ entity.name }}"               # default: the same name
          copy_fields: all                        # all (default), none, or a list of field names
          fields: {"Менеджер по продажам": "{{ entity.responsible.name }}"}   # set on the copy
          tags: ["{{ entity.fields['Причина отказа'] }}"]   # default: the same tags
          contacts: true                          # link the same contacts and company (default)

Budget (price) is copied too. The copy is a new record: the CRM's own webhooks announce it
(`entity.created`), so rules for its first stage run from there.
"""
from marshmallow import Schema
from marshmallow import fields as f

NAME = "copy_entity"


class Options(Schema):
    pipeline = f.String(required=True, metadata={"expected": "a pipeline name or id"})
    stage = f.String(required=True, metadata={"expected": "a stage name or id"})
    responsible = f.Raw(load_default=None, metadata={"expected": "a user name or id"})
    name = f.String(load_default=None, metadata={"expected": "the new record's name"})
    copy_fields = f.Raw(load_default="all", metadata={"expected": "all, none, or a list of field names"})
    fields = f.Dict(keys=f.String(), load_default=dict,
                    metadata={"expected": "a mapping of field name to value"})
    tags = f.List(f.String(), load_default=None, metadata={"expected": "a list of tag names"})
    contacts = f.Boolean(load_default=True, metadata={"expected": "true or false"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    copy = options["copy_fields"]
    if copy not in ("all", "none") and not (isinstance(copy, list) and all(isinstance(n, str) for n in copy)):
        raise ValueError(f"copy_fields: expected all, none, or a list of field names, found {copy!r}")
    tags = None if options["tags"] is None else [t.strip() for t in options["tags"] if str(t).strip()]
    values = {k: v for k, v in options["fields"].items() if v not in (None, "")}
    responsible = str(options["responsible"] if options["responsible"] is not None else "").strip()
    args = {"pipeline": options["pipeline"], "stage": options["stage"], "responsible": responsible or None,
            "fields": values, "tags": tags, "contacts": options["contacts"],
            "copy_fields": copy if isinstance(copy, list) else copy == "all"}
    if options["name"]:
        args["name"] = options["name"]
    return [ctx.step("copy_entity", options["connection"], entity=ctx.entity_ref, **args)]
