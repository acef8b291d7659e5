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

from dataclasses import dataclass
from typing import Any

from connectors.base import PermanentApiError


@dataclass(frozen=True)
class StepContext:
    """What a step may use: the runtime (store, keys, clients by connection), the client of the
    action's connection, the step's idempotency key and that connection's name."""
    rt: Any
    client: Any
    key: str
    connection: str


def require(ctx: StepContext, method: str, requires: frozenset[str]) -> None:
    """Refuse a step whose client lacks a verb it calls (start-up refuses most of them first)."""
    lacking = sorted(v for v in requires if not ctx.client.can(v))
    if lacking:
        raise PermanentApiError(f"connection {ctx.connection!r} cannot {method}: its client has no "
                                f"{', '.join(lacking)}")


from pipeline.steps import (  # noqa: E402  (the modules use StepContext and require)
    call_back,
    find_or_create,
    lookup_field,
    move_forward,
    start_next_task,
    track_time,
)

# action method → its step (each module's METHOD; tests/test_steps.py checks they agree)
STEPS: dict[str, Any] = {
    "call_back": call_back,
    "find_or_create": find_or_create,
    "lookup_field": lookup_field,
    "move_forward": move_forward,
    "start_next_task": start_next_task,
    "track_time": track_time,
}
