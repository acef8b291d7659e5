"""move_forward: `move_to_stage: {stage, only_forward: true}` — move a record to a stage unless it
already stands at or past that stage of its own pipeline (rules/move_to_stage.py plans this step
instead of a plain move when only_forward is asked).

Built on the CRM client's find_stage (the stage named → ids), read_stage (where the record is now,
one read), stage_order (the ranks of a pipeline's stages, cached; read fresh once when a stage is
missing from it) and its plain move_to_stage. A stage of another pipeline is always a move into
that pipeline. The answer is {"moved": bool} (and a "reason" when not): the executor reads it
to leave an undo mark alone when nothing moved.
"""
from __future__ import annotations

from typing import Any

from connectors.base import Entity
from pipeline.steps.base import StepContext, require

METHOD = "move_forward"
REQUIRES = frozenset({"find_stage", "read_stage", "stage_order", "move_to_stage"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)


def run(ctx: StepContext, entity: Entity, stage: str, pipeline: str | None = None) -> dict[str, Any] | None:
    require(ctx, METHOD, REQUIRES)
    client = ctx.client
    if client.record_only:   # nothing can be read: the move is logged as the rule wrote it
        return _moved(client.move_to_stage(entity, stage, pipeline))
    there = client.find_stage(entity, stage, pipeline)
    here = client.read_stage(entity) or {}
    if there["pipeline"] in (None, here.get("pipeline")) and _at_or_past(client, entity, here, there["stage"]):
        return {"moved": False, "reason": f"already at stage {here['stage']}, not before {there['stage']}"}
    return _moved(client.move_to_stage(entity, there["stage"], there["pipeline"],
                                       current_pipeline=here.get("pipeline")))


def _at_or_past(client: Any, entity: Entity, here: dict[str, Any], there: str) -> bool:
    """Does the record's stage come at or after `there` in its pipeline? Unknown stages (read fresh
    once first): no, and the move goes ahead."""
    now = str(here.get("stage") or "")
    order = client.stage_order(entity, here.get("pipeline"))
    if now not in order or there not in order:
        order = client.stage_order(entity, here.get("pipeline"), fresh=True)
    return now in order and there in order and order[there] <= order[now]


def _moved(answer: Any) -> dict[str, Any] | None:
    """The plain move's answer as {"moved": …} (None: record-only, nothing was moved or read)."""
    if answer is None or isinstance(answer, dict):
        return answer
    return {"moved": bool(answer)}
