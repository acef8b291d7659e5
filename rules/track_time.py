"""Add up the time a task spends in one stage ("In work") and write the total to a field.

    on: {event: stage.changed, entity: task}
    do:
      - track_time:
          stage: "В роботі"            # time counts while the task is in this stage (a list = any)
          field: "Витрачено, год"       # the total, in hours, written when a period ends
          decimals: 2                  # rounding of the hours written (default 2)

Every status change of the task should reach the rule: entering the stage opens a period at
the moment of the change (the webhook's `at`), leaving it for any other stage closes it, adds
it to the task's total and writes the total. Several periods add up. The open period and the
total are kept in Redis per connection and task, so they survive restarts and are shared by
all workers; each change is counted once however often it is delivered, a second "entered"
while a period is open keeps the first start, and a change older than the open period's start
(a late delivery) is ignored.
"""
from marshmallow import Schema, fields

from rules.conditions import ref_matches

NAME = "track_time"
CLIENT_METHOD = "track_time"  # a pipeline step: refused at start-up where the client lacks a verb it REQUIRES


class Options(Schema):
    stage = fields.Raw(required=True, metadata={"expected": "the stage time counts in (a name, id or list)"})
    field = fields.String(required=True, metadata={"expected": "the field the total hours go to"})
    decimals = fields.Integer(load_default=2, metadata={"expected": "decimals of the hours written"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    # the stage the change reported (the webhook's), not the one read later: the task may have
    # moved on again by the time this runs
    stage = ctx.event.data.get("stage") or ctx.entity.get("stage")
    stages = options["stage"] if isinstance(options["stage"], list) else [options["stage"]]
    counting = ref_matches(stage, [str(s) for s in stages])
    return [ctx.step("track_time", options["connection"], entity=ctx.entity_ref, counting=counting,
                     at=ctx.event.occurred_at or ctx.now.isoformat(), change=ctx.event.id,
                     field=options["field"], decimals=options["decimals"])]
