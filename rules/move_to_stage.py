"""Move the event's entity to another stage (and pipeline).

    do:
      - move_to_stage: "Proposal approval"     # stage name as the CRM shows it, or its id
      - move_to_stage: {stage: "Getting the brief", pipeline: Sales}
"""
from marshmallow import Schema, fields

NAME = "move_to_stage"
SHORTHAND = "stage"


class Options(Schema):
    stage = fields.String(required=True, metadata={"expected": "a stage name or id"})
    pipeline = fields.String(load_default=None, metadata={"expected": "a pipeline name or id"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})


def plan(ctx, options: dict) -> list:
    return [ctx.step("move_to_stage", options["connection"], entity=ctx.entity_ref,
                     stage=options["stage"], pipeline=options["pipeline"])]
