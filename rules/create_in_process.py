"""Create a task in another process (Planfix): the production's task for an order, as a subtask of it, with its status, executor, deadline and fields.

    on: {event: stage.changed, entity: task, stage: "У виробництво", undo: false}
    do:
      - create_in_process:
          process: "Кондитери"                      # the process (by name or id) the task belongs to
          status: "Нова"                            # a status of that process
          text: "Виготовити: {{ entity.name }}"     # the first line is the task's name, the rest its description
          responsible: "{{ entity.fields['Кондитер'] }}"   # a user by name or id (default: the order's)
          due: "{{ entity.fields['Дата видачі'] }}"  # a duration from now, a date, or a template (optional)
          fields: {"Опис виробу": "{{ entity.fields['Опис виробу'] }}"}   # the new task's fields

Playbook B5: the confectioners work in their own process and see only the tasks they take part
in, which is Planfix's own permission (the process's and the task's participants), not crmbridge's.
The task is made once per event and rule, like create_task; one that got no clear answer is
parked for a person, never made twice blindly.
"""
from marshmallow import Schema
from marshmallow import fields as f

NAME = "create_in_process"
METHOD = "create_in_process"
CLIENT_METHOD = METHOD  # rules/_verb_support.py: refused at start-up where a client cannot
REFUSED = {"amocrm": "amoCRM tasks have no process or status of their own: use create_task",
           "bitrix24": "Bitrix24 tasks have no process: use create_task (or copy_entity for a deal)"}


class Options(Schema):
    process = f.String(required=True, metadata={"expected": "the task process (a name or id)"})
    text = f.String(required=True, metadata={"expected": "the task text (its first line is the name)"})
    status = f.String(load_default=None, metadata={"expected": "a status of that process"})
    responsible = f.Raw(load_default=None, metadata={"expected": "a user name or id"})
    due = f.Raw(load_default=None, metadata={"expected": "a duration such as '2 working days', or a date"})
    fields = f.Dict(keys=f.String(), load_default=dict, metadata={"expected": "a mapping of field name to value"})
    connection = f.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    if not options["text"].strip():
        raise ValueError("create_in_process: the text is empty after rendering the template")
    responsible = options["responsible"] or (ctx.entity.get("responsible") or {}).get("id")
    due = ctx.moment(options["due"]).isoformat() if options["due"] not in (None, "") else None
    values = {k: v for k, v in options["fields"].items() if v not in (None, "")}
    return [ctx.step(METHOD, options["connection"], entity=ctx.entity_ref, text=options["text"], process=options["process"],
                     status=options["status"], responsible=responsible, due=due, fields=values)]
