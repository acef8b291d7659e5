"""What a step is given (StepContext) and the guard every step starts with (require)."""
from __future__ import annotations

import json
from collections.abc import Callable
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


def require(ctx: StepContext, method: str, requires: frozenset[str]) -> None:
    """Refuse a step whose client lacks a verb it calls (start-up refuses most of them first)."""
    lacking = sorted(v for v in requires if not ctx.client.can(v))
    if lacking:
        raise PermanentApiError(f"connection {ctx.connection!r} cannot {method}: its client has no "
                                f"{', '.join(lacking)}")
