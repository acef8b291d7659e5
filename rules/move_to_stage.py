"""Move the event's entity to another stage (and pipeline).

    do:
      - move_to_stage: "Proposal approval"     # stage name as the CRM shows it, or its id
      - move_to_stage: {stage: "Getting the brief", pipeline: Sales}
      - move_to_stage: {stage: Paid, only_forward: true}   # never back: a deal already past
                                                            # "Paid" in its pipeline stays (amoCRM,
                                                            # Bitrix24; refused on Planfix at start-up)
      - move_to_stage: {stage: "{{ entity.previous_stage.id }}", undo: true}
            # a gate putting the deal back: the CRM's stage change that follows comes with
            # `data.undo`, so rules on entering that stage can skip it (`expr: "not data.undo"`)
"""
from marshmallow import Schema, fields

NAME = "move_to_stage"
SHORTHAND = "stage"


class Options(Schema):
    stage = fields.String(required=True, metadata={"expected": "a stage name or id"})
    pipeline = fields.String(load_default=None, metadata={"expected": "a pipeline name or id"})
    connection = fields.String(load_default=None, metadata={"expected": "a CRM connection name"})
    only_forward = fields.Boolean(load_default=False, metadata={"expected": "true or false"})
    undo = fields.Boolean(load_default=False, metadata={"expected": "true or false"})


def plan(ctx, options: dict) -> list:
    # only_forward: the step that reads the stage order first (pipeline/steps/move_forward.py);
    # only CRMs that know their stages' order can do it (refused elsewhere at start-up)
    method = "move_forward" if options["only_forward"] else "move_to_stage"
    extra = {"undo": True} if options["undo"] else {}  # the worker's mark, not the CRM's (pipeline.stages.remember_undo)
    return [ctx.step(method, options["connection"], entity=ctx.entity_ref,
                     stage=options["stage"], pipeline=options["pipeline"], **extra)]
