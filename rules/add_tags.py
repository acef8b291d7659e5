"""Add tags to the event's entity (and remove others), by name; a template per tag.

    do:
      - add_tags: ["{{ entity.fields['Причина отказа'] }}"]     # a tag named by a field's value
      - add_tags: {tags: [VIP], remove: [new]}

Tags that render empty (the field is not filled) are left out; nothing is called when no tag
is left to add or remove.
"""
from marshmallow import Schema, fields

NAME = "add_tags"
SHORTHAND = "tags"


class Options(Schema):
    tags = fields.List(fields.String(), required=True, metadata={"expected": "a list of tag names (templates)"})
    remove = fields.List(fields.String(), load_default=list, metadata={"expected": "a list of tag names to remove"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def _names(values: list) -> list[str]:
    found: list[str] = []
    for value in values:
        name = str(value).strip()
        if name and name not in found:
            found.append(name)
    return found


def plan(ctx, options: dict) -> list:
    add, remove = _names(options["tags"]), _names(options["remove"])
    if not add and not remove:
        return []
    return [ctx.step("change_tags", options["connection"], entity=ctx.entity_ref, add=add, remove=remove)]
