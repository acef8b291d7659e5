"""Start the next task of an ordered project when one is completed (Planfix projects).

    do:
      - start_next_task:
          order_field: "Порядок"        # a number field giving each task's place in the project;
                                        # tasks without it follow the project's list (task number) order
          status: "В роботі"            # the status the next task is moved to
          waiting: ["Нова", "Чернетка"]  # statuses of a task that has not started yet (default: Нова)
          deadline: 2 working days      # its deadline, counted from now in the rule's calendar
          responsible: "Олена Коваленко"  # optional: its executor; default: the one it already has

"The next task" is the task of the same project with the smallest order above the completed
one's. It is started only while it is still waiting: a second delivery of the same completion
(or a task reopened and completed again) finds it started and does nothing.
"""
from marshmallow import Schema, fields

NAME = "start_next_task"


class Options(Schema):
    order_field = fields.String(load_default=None, metadata={"expected": "the order field's name, e.g. 'Порядок'"})
    status = fields.String(required=True, metadata={"expected": "the status to move the next task to"})
    waiting = fields.List(fields.String(), load_default=["Нова"],
                          metadata={"expected": "statuses of a task not started yet, e.g. ['Нова']"})
    deadline = fields.Raw(load_default=None, metadata={"expected": "a duration such as '2 working days', or a date"})
    responsible = fields.Raw(load_default=None, metadata={"expected": "a user name or id"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    if ctx.entity_ref["type"] != "task":
        raise ValueError(f"start_next_task works on a task, not on a {ctx.entity_ref['type']}")
    due = ctx.moment(options["deadline"]).isoformat() if options["deadline"] not in (None, "") else None
    return [ctx.step("start_next_task", options["connection"], entity=ctx.entity_ref,
                     order_field=options["order_field"], status=options["status"],
                     waiting=list(options["waiting"]), due=due, responsible=options["responsible"] or None)]
