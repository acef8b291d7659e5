"""Create a task on the event's entity, for its responsible user unless told otherwise.

    do:
      - create_task:
          text: "Contact the client and take the lead in work"
          due: 1 working day            # a duration from now, a date/datetime, or a template
          responsible: "Olena Kovalenko"  # a user name as the CRM shows it, or an id;
                                          # default: the entity's responsible user
          type: 1                       # optional CRM task type id (amoCRM: 1 call, 2 meeting)
"""
from marshmallow import Schema, fields

NAME = "create_task"
SHORTHAND = "text"


class Options(Schema):
    text = fields.String(required=True, metadata={"expected": "the task text"})
    due = fields.Raw(load_default="1 working day", metadata={"expected": "a duration such as '1 working day', or a date"})
    responsible = fields.Raw(load_default=None, metadata={"expected": "a user name or id"})
    type = fields.Integer(load_default=None, metadata={"expected": "a task type id"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    responsible = options["responsible"] or (ctx.entity.get("responsible") or {}).get("id")
    due = ctx.moment(options["due"]).isoformat()
    return [ctx.step("create_task", options["connection"], entity=ctx.entity_ref, text=options["text"],
                     due=due, responsible=responsible, task_type=options["type"])]
