"""save_order_photo: the last photo the client sent in an order (kept by find_or_create kind:
order, pipeline/steps/find_order.py) downloaded through the inbox connection that received it
(its client's download_file: allowed hosts only, without credentials) and saved into the order as a
comment carrying the file (the CRM client's add_chat_comment: the upload, then the comment).
rules/save_order_photo.py plans it; playbook B3 «Фото замовлення»."""
from __future__ import annotations

from typing import Any

from connectors.base import Entity, PermanentApiError
from pipeline.steps.base import StepContext, require
from pipeline.steps.find_order import order_photo

METHOD = "save_order_photo"
REQUIRES = frozenset({"add_chat_comment"})
ONE_CLIENT = False   # the photo is read through the inbox's client (a read: nothing to repeat there)


def run(ctx: StepContext, entity: Entity, text: str, none: str) -> dict[str, Any]:
    """{saved: True, comment, file} or {saved: False, reason} when the client sent no photo in it."""
    require(ctx, METHOD, REQUIRES)
    if entity.type != "task":
        raise PermanentApiError(f"save_order_photo: an order is a task, not a {entity.type}")
    photo = order_photo(ctx.rt, ctx.connection, str(entity.id))
    if photo is None:
        if none == "fail":
            raise PermanentApiError(f"save_order_photo: the client sent no photo in order {entity.id}")
        return {"saved": False, "reason": "the client sent no photo in this order"}
    inbox = ctx.rt.client(photo["connection"])
    if not inbox.can("download_file"):
        raise PermanentApiError(f"connection {photo['connection']!r} cannot download its messages' files")
    content, name = inbox.download_file(photo["url"])
    comment = ctx.client.add_chat_comment(entity, text, [{"content": content, "name": photo.get("name") or name}])
    return {"saved": True, "comment": None if comment is None else str(comment), "file": photo.get("name") or name,
            "bytes": len(content)}
