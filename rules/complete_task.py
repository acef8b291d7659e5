"""Complete a task, with a result text.

    do:
      - complete_task: "Done by crmbridge"              # the event's task (a task.* event)
      - complete_task: {task: "{{ data.task_id }}", result: "КП загружено"}
      - complete_task: {matching: "^Проверить бриф", result: "КП загружено: {{ data.file.name }}"}
                                                        # the entity's open tasks whose text matches

amoCRM closes a task with a result text (tasks-api, "Выполнение задачи"), so `result:` is
required. `matching:` is a regular expression (without regard to case) over the texts of the open tasks
of the record the action works on (the event's, or `entity:`); each one that matches is closed.
"""
from marshmallow import Schema, fields

NAME = "complete_task"
SHORTHAND = "result"


class Options(Schema):
    result = fields.String(required=True, metadata={"expected": "the result text (a template)"})
    task = fields.Raw(load_default=None, metadata={"expected": "a task id (default: the event's task)"})
    matching = fields.String(load_default=None, metadata={"expected": "a regular expression over open task texts"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    if options["matching"]:
        if ctx.entity_ref["type"] == "task":
            raise ValueError("complete_task: matching: works on a record's tasks, and the event's record is a task; "
                             "name the record with entity: 'lead:{{ entity.parent.id }}'")
        return [ctx.step("complete_tasks_matching", options["connection"], entity=ctx.entity_ref,
                         pattern=options["matching"], result_text=options["result"])]
    task = options["task"] if options["task"] not in (None, "") else (
        ctx.entity_ref["id"] if ctx.entity_ref["type"] == "task" else None)
    if task in (None, ""):
        raise ValueError("complete_task: expected task: <id>, or a task event, or matching: <regex>")
    return [ctx.step("complete_task", options["connection"], task_id=str(task).strip(),
                     result_text=options["result"])]
