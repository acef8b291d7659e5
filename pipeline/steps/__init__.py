"""Steps that take more than one vendor call, built on the clients' single-call verbs.

A rule plans `ctx.action("find_or_create", …)`; when the action's method names a step here, the
executor runs `STEPS[method].run(ctx, **args)` instead of a client method. Each step module sets
`METHOD` (the action method it runs) and `REQUIRES` (the client verbs it calls, for start-up checks).
"""
from __future__ import annotations

import json
from collections.abc import Callable
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

    def once(self, name: str, call: Callable[[], Any]) -> Any:
        """One vendor call of the step, recorded under its own key (the step's key + `name`): a
        step tried again (a retry, a re-run after a crash) resumes after the last call that
        succeeded instead of repeating it (a copy is created once, then linked)."""
        key = self.rt.keys("done", f"{self.key}|{name}")
        raw = self.rt.store.get(key)
        if raw is not None:
            return json.loads(raw)
        result = call()
        self.rt.store.set(key, json.dumps(result, default=str), ex=self.rt.settings.done_ttl)
        return result


from pipeline.steps import send_digest  # noqa: E402  (after StepContext, which they use)

STEPS: dict[str, Any] = {module.METHOD: module for module in (send_digest,)}
