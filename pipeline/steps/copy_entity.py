"""copy_entity: a lead copied into another pipeline, then linked to the source's contacts and
company (amoCRM). Two vendor calls, each recorded once: a 429 or a 5xx on the link is retried
without creating a second copy, and a replayed step links the copy it made. The create is never
repeated blindly (StepContext.created): a 5xx after it was sent, no answer, or a worker that died
mid-step is settled by reading back (the client's find_lead: a lead made since the first try in
that pipeline with that name); found, it is the copy; not found, it is made once more."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from connectors.base import Entity, PermanentApiError
from pipeline.steps.base import StepContext, require

METHOD = "copy_entity"
REQUIRES = frozenset({"get_raw", "create_copy", "link_copy"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)


def settles(client: Any) -> bool:
    """Does the step settle its own create here? With find_lead, the copy is made through
    StepContext.created (read back when uncertain), the source is a read and the link is recorded
    once (made twice, one link): a run cut short anywhere is run again (pipeline.execute), never parked."""
    return client.can("find_lead") and not client.record_only


def run(ctx: StepContext, entity: Entity, pipeline: str, stage: str, responsible: str | int | None = None,
        fields: dict[str, Any] | None = None, tags: list[str] | None = None, contacts: bool = True,
        copy_fields: bool | list[str] = True, name: str | None = None) -> int | None:
    require(ctx, METHOD, REQUIRES)
    client = ctx.client
    if client.record_only:   # the call it would make is logged; nothing is kept
        return client.create_copy(None, pipeline, stage)
    settle = settles(client)   # else the create is recorded once and an uncertain one is parked
    with ctx.settling() if settle else nullcontext():   # the read, the create, the link: each settled
        source = client.get_raw(entity)
        if source is None:
            raise PermanentApiError(f"amoCRM has no {entity.type} {entity.id} to copy")

        def create() -> Any:
            return client.create_copy(source, pipeline, stage, responsible, fields, tags, copy_fields, name)

        def find(since: str) -> Any:
            return client.find_lead(pipeline, stage, name or source.get("name"), since)

        new_id = ctx.created("create", create, find) if settle else ctx.once("create", create)
        if new_id is not None and contacts:
            ctx.once("link", lambda: client.link_copy(new_id, source))   # a link made twice is one link
    return new_id
