"""Steps that take more than one vendor call, built on the clients' single-call verbs.

A rule plans `ctx.step("find_or_create", …)`; when the action's method names a step here, the
executor runs `STEPS[method].run(StepContext(…), **args)` instead of a client method. Each step
module sets `METHOD` (the action method it runs), `REQUIRES` (the client verbs it calls: start-up
checks hold them against a client's `capabilities`) and `run(ctx, **args)`, whose arguments are
the action's (its `entity` an `Entity`). A step keeps its state in `ctx.rt.store` under
`ctx.rt.keys(…)`, and makes every vendor call through `ctx.client`, so that the executor's
`client.sending` marks the step "sent" before the first request leaves.
"""
from __future__ import annotations

from typing import Any

from pipeline.steps import (
    attach_to_deal,
    call_back,
    copy_entity,
    create_in_process,
    find_or_create,
    find_order,
    lookup_field,
    make_document,
    move_forward,
    record,
    save_order_photo,
    send_digest,
    send_sms,
    send_bulk,
    start_next_task,
    track_time,
)
from pipeline.steps.base import StepContext, require

__all__ = ["STEPS", "StepContext", "require"]

# action method → its step (each module's METHOD; tests/test_steps.py checks they agree)
STEPS: dict[str, Any] = {
    "attach_to_deal": attach_to_deal,
    "call_back": call_back,
    "copy_entity": copy_entity,
    "create_in_process": create_in_process,
    "find_or_create": find_or_create,
    "find_or_create_order": find_order,
    "lookup_field": lookup_field,
    "make_document": make_document,
    "move_forward": move_forward,
    "record": record,
    "save_order_photo": save_order_photo,
    "send_digest": send_digest,
    "send_sms": send_sms,
    "send_bulk": send_bulk,
    "start_next_task": start_next_task,
    "track_time": track_time,
}
