"""Start the next task of an ordered project when one is completed (Planfix projects).

    do:
      - start_next_task:
          order_field: "Порядок"        # a number field giving each task's place in the project;
                                        # tasks without it follow the project's list (task number) order
          status: "В роботі"            # the status the next task is moved to
          waiting: ["Нова", "Чернетка"]  # statuses of a task that has not started yet (default: Нова)
          deadline: 2 working days      # its deadline, counted from now in the rule's calendar
          responsible: "Олена Коваленко"  # optional: its executor; default: the one it already has
          create:                       # optional: the service's tasks in order, for a project
            - {name: "Комунікація", executor: "Олена Коваленко", days: 2}      # that lacks the next one
            - {name: "Рубрикатор", executor: "Ірина Мельник", days: 3, fields: {"Тип задачі": "Рубрикатор"}}
          copy_fields: ["Telegram чат"] # fields a created task takes from the completed one

"The next task" is the task of the same project with the smallest order above the completed
one's. It is started only while it is still waiting: a second delivery of the same completion
(or a task reopened and completed again) finds it started and does nothing.

A project made from a Planfix project template has all its tasks from the start, and `create`
never acts. When the project has no task after the completed one (made by hand, or a task
deleted), the entry of `create` after the completed task's name is created in the project, in
`status`, with its executor, a deadline `days` working days from now and its `fields`; never
when a task of that name is already in the project, so it is created once.
"""
from marshmallow import Schema, ValidationError, fields

NAME = "start_next_task"
CLIENT_METHOD = "start_next_task"  # a pipeline step: refused at start-up where the client lacks a verb it REQUIRES
_NO_PROJECTS = "tasks belong to records, not to ordered projects; start_next_task reads a Planfix project's tasks"
REFUSED = {"amocrm": "amoCRM " + _NO_PROJECTS, "bitrix24": "Bitrix24 " + _NO_PROJECTS}
TEMPLATE_KEYS = {"name", "executor", "days", "fields"}


def _templates(value: list) -> None:
    for item in value:
        if not isinstance(item, dict) or not item.get("name") or set(item) - TEMPLATE_KEYS:
            raise ValidationError(f"expected {{name: 'Рубрикатор', executor: 'Олена Коваленко', days: 3}}, "
                                  f"found {item!r}")
        days = item.get("days", 0)
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise ValidationError(f"{item['name']!r}: days: expected a whole number of working days, found {days!r}")
        if not isinstance(item.get("fields") or {}, dict):
            raise ValidationError(f"{item['name']!r}: fields: expected a mapping of field name to value")
    names = [str(i["name"]).strip().casefold() for i in value]
    if len(set(names)) != len(names):
        raise ValidationError("two tasks of the list have the same name")


class Options(Schema):
    order_field = fields.String(load_default=None, metadata={"expected": "the order field's name, e.g. 'Порядок'"})
    status = fields.String(required=True, metadata={"expected": "the status to move the next task to"})
    waiting = fields.List(fields.String(), load_default=["Нова"],
                          metadata={"expected": "statuses of a task not started yet, e.g. ['Нова']"})
    deadline = fields.Raw(load_default=None, metadata={"expected": "a duration such as '2 working days', or a date"})
    responsible = fields.Raw(load_default=None, metadata={"expected": "a user name or id"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})
    create = fields.List(fields.Dict(), load_default=None, validate=_templates,
                         metadata={"expected": "the service's tasks in order: [{name, executor, days, fields}]"})
    copy_fields = fields.List(fields.String(), load_default=None,
                              metadata={"expected": "names of fields a created task copies, e.g. ['Telegram чат']"})


def plan(ctx, options: dict) -> list:
    if ctx.entity_ref["type"] != "task":
        raise ValueError(f"start_next_task works on a task, not on a {ctx.entity_ref['type']}")
    due = ctx.moment(options["deadline"]).isoformat() if options["deadline"] not in (None, "") else None
    args = {}
    if options["create"]:
        args["create"] = [{"name": str(item["name"]), "responsible": item.get("executor"),
                           "due": ctx.moment(f"{int(item.get('days') or 0)} working days").isoformat()
                           if item.get("days") else None, "fields": item.get("fields") or {}}
                          for item in options["create"]]
        args["copy_fields"] = list(options["copy_fields"] or [])
    return [ctx.step("start_next_task", options["connection"], entity=ctx.entity_ref,
                     order_field=options["order_field"], status=options["status"],
                     waiting=list(options["waiting"]), due=due, responsible=options["responsible"] or None, **args)]
