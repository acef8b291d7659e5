"""Write a submitted form's answers into a CRM record's fields, by question title.

    on: {event: form.submitted, connection: brief-form}
    do:
      - fill_from_form:
          connection: agency-planfix
          entity: "contact:{{ entity.contact.id }}"   # the record to fill (required for form events)
          map:                                         # question title: field name
            "Назва компанії": "Компанія"
            "Які соцмережі ведемо?": "Соцмережі"
          join: ", "                                   # how a checkbox answer (a list) is written

A question left unanswered (or missing from the form) is skipped, so a shorter form never
erases what the record already has. Grid answers (a list per row) are written one row a line.
"""
from marshmallow import Schema, fields

NAME = "fill_from_form"


class Options(Schema):
    map = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                      metadata={"expected": "a mapping of question title to field name"})
    join = fields.String(load_default=", ", metadata={"expected": "the separator for checkbox answers"})
    connection = fields.String(required=True, metadata={"expected": "the CRM connection to write to"})


def plan(ctx, options: dict) -> list:
    if ctx.target is None:
        raise ValueError("fill_from_form needs entity: the record to fill, e.g. 'contact:{{ entity.contact.id }}'")
    answers = (ctx.event.data or {}).get("answers") or {}
    values = {}
    for question, field in options["map"].items():
        value = _text(answers.get(question), options["join"])
        if value:
            values[field] = value
    if not values:
        return []
    return [ctx.step("set_fields", options["connection"], entity=ctx.entity_ref, fields=values)]


def _text(answer, join: str) -> str:
    """A text answer as is, a checkbox list joined, a grid one row a line."""
    if isinstance(answer, list):
        rows = [join.join(str(a) for a in row) if isinstance(row, list) else str(row) for row in answer]
        sep = "\n" if any(isinstance(row, list) for row in answer) else join
        return sep.join(r for r in rows if r).strip()
    return "" if answer is None else str(answer).strip()
