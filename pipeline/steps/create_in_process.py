"""create_in_process: a task in a named process, with its status (rules/create_in_process.py plans
it): the process's id read (client.process_id, cached), then one create (client.create_task with
`pipeline` the id). Not repeatable: a create that may have been made is parked for a person. A
field whose value renders empty (the source record lacks it) is left out, not written empty."""
from __future__ import annotations

from typing import Any

from connectors.base import Entity
from pipeline.steps.base import StepContext, require

METHOD = "create_in_process"
REQUIRES = frozenset({"process_id", "create_task"})
ONE_CLIENT = True


def run(ctx: StepContext, entity: Entity, text: str, process: Any, status: Any = None, responsible: Any = None,
        due: str | None = None, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    require(ctx, METHOD, REQUIRES)
    process_id = ctx.client.process_id(process)
    fields = {name: value for name, value in (fields or {}).items() if value not in (None, "")}
    made = ctx.client.create_task(entity, text, due=due, responsible=responsible, status=status, pipeline=process_id,
                                  fields=fields or None)
    return {"task": None if made is None else str(made), "process": str(process_id)}
