"""A daily list per person (overdue tasks) to a Telegram chat or an email address.

    on: {schedule: {at: "09:00", working_days: true}, connection: agency-amo}
    do:
      - send_digest:
          query: overdue_tasks                 # open tasks past their due time, read from the CRM
          source: agency-amo                   # the CRM (default: the rule's connection)
          group_by: responsible                # one message per responsible user
          to: {connection: staff-bot, chat: head}          # or {connection: agency-mail, email: head@…}
          title: "Просроченные задачи на {{ data.scheduled_for[:10] }}"

Nobody with an overdue task: nothing is sent. Each person's message is sent once, even when
the step is retried after a failure half-way.
"""
from marshmallow import Schema, ValidationError, fields, validate, validates

NAME = "send_digest"
QUERIES = ("overdue_tasks",)


class Options(Schema):
    query = fields.String(required=True, validate=validate.OneOf(QUERIES),
                          metadata={"expected": f"one of {', '.join(QUERIES)}"})
    source = fields.String(load_default=None, metadata={"expected": "the CRM connection to read"})
    group_by = fields.String(load_default="responsible", validate=validate.OneOf(["responsible"]),
                             metadata={"expected": "responsible"})
    to = fields.Dict(required=True, metadata={"expected": "{connection, chat} or {connection, email}"})
    title = fields.String(load_default="Просроченные задачи", metadata={"expected": "the first line (a template)"})

    @validates("to")
    def _to(self, value: dict, **_) -> None:
        if not value.get("connection") or not (value.get("chat") or value.get("email")):
            raise ValidationError("expected {connection: <name>, chat: <chat>} or {connection: <name>, email: <address>}")


def plan(ctx, options: dict) -> list:
    source = options["source"] or ctx.event.connection
    if not source:
        raise ValueError("source: the CRM connection to read is not known; name it")
    to = {k: str(v) for k, v in options["to"].items() if k in ("connection", "chat", "email")}
    return [ctx.step("send_digest", to["connection"], source=source, query=options["query"],
                     group_by=options["group_by"], to=to, title=options["title"], now=ctx.now.isoformat(),
                     tz=ctx.calendar.timezone)]
