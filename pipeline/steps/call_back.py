"""call_back: ring the manager, then connect the client — unless the two talked and the pause
after that talk is still on (rules/call_back.py plans it; telephony connections).

The pause starts when a `call.ended` event says they talked (pipeline/observers.py, which reads
the pending entry this step leaves); it ends at the `pause_until` the rule planned with the call
(its working calendar: the end of the next working day). The one vendor call is the client's
request_callback; `extension` names a CRM user's PBX extension.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from connectors.base import Entity
from pipeline.steps.base import StepContext, require

METHOD = "call_back"
REQUIRES = frozenset({"request_callback", "extension"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)
PENDING_TTL = 24 * 3600
PAUSE_TTL = 14 * 24 * 3600   # kept at least this long; the pause itself ends at its `until`


def run(ctx: StepContext, manager: str, client: str, pause_until: str | None = None,
        entity: Entity | None = None, now: str | None = None) -> dict[str, Any]:
    """{"requested": True, "time"} (or "recorded" in record-only mode), or {"skipped": why}."""
    require(ctx, METHOD, REQUIRES)
    extension, number = digits(ctx.client.extension(manager)), digits(client)
    moment = datetime.fromisoformat(now) if now else datetime.now(UTC)
    paused = read(ctx.rt, call_key(ctx.rt, ctx.connection, "paused", extension, number))
    if paused and datetime.fromisoformat(paused["until"]) > moment:
        return {"skipped": f"talked at {paused['talked_at']}; calls paused until {paused['until']}"}
    answer = ctx.client.request_callback(manager, client)
    keep(ctx.rt, call_key(ctx.rt, ctx.connection, "pending", extension, number),
         {"pause_until": pause_until, "entity": str(entity) if entity else None}, PENDING_TTL)
    return answer


def call_key(rt: Any, connection: str, what: str, manager: str, number: str) -> str:
    """A manager's and a client's call state: "pending" (a callback asked), "paused" (they talked)."""
    return rt.keys("calls", connection, what, manager, number)


def digits(number: Any) -> str:
    """A phone number or extension as the state is keyed by: its digits."""
    return re.sub(r"\D", "", str(number or ""))


def read(rt: Any, key: str) -> dict[str, Any] | None:
    raw = rt.store.get(key)
    return json.loads(raw) if raw else None


def keep(rt: Any, key: str, value: dict[str, Any], ttl: int) -> None:
    rt.store.set(key, json.dumps(value), ex=ttl)
