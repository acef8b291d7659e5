"""Steps that take more than one vendor call, built on the clients' single-call verbs.

A rule plans `ctx.action("find_or_create", …)`; when the action's method names a step here, the
executor runs `STEPS[method].run(ctx, **args)` instead of a client method. Each step module sets
`METHOD` (the action method it runs) and `REQUIRES` (the client verbs it calls, for start-up checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepContext:
    """What a step may use: the runtime (store, keys, clients by connection), the client of the
    action's connection, the step's idempotency key and that connection's name."""
    rt: Any
    client: Any
    key: str
    connection: str


from pipeline.steps import send_digest  # noqa: E402  (after StepContext, which they use)

STEPS: dict[str, Any] = {module.METHOD: module for module in (send_digest,)}
