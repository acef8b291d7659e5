"""copy_entity: a lead copied into another pipeline, then linked to the source's contacts and
company (amoCRM). Two vendor calls, each recorded once (StepContext.once): a 429 or a 5xx on the
link is retried without creating a second copy, and a replayed step links the copy it made."""
from __future__ import annotations

from typing import Any

from connectors.base import Entity, PermanentApiError
from pipeline.steps.base import StepContext, require

METHOD = "copy_entity"
REQUIRES = frozenset({"get_raw", "create_copy", "link_copy"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)


def run(ctx: StepContext, entity: Entity, pipeline: str, stage: str, responsible: str | int | None = None,
        fields: dict[str, Any] | None = None, tags: list[str] | None = None, contacts: bool = True,
        copy_fields: bool | list[str] = True, name: str | None = None) -> int | None:
    require(ctx, METHOD, REQUIRES)
    client = ctx.client
    if client.record_only:   # the call it would make is logged; nothing is kept
        return client.create_copy(None, pipeline, stage)
    source = client.get_raw(entity)
    if source is None:
        raise PermanentApiError(f"amoCRM has no {entity.type} {entity.id} to copy")
    new_id = ctx.once("create", lambda: client.create_copy(source, pipeline, stage, responsible, fields, tags,
                                                          copy_fields, name))
    if new_id is not None and contacts:
        ctx.once("link", lambda: client.link_copy(new_id, source))
    return new_id
