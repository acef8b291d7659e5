"""track_time: add up the time a task spends in one stage and write the total hours to a field
(rules/track_time.py plans it: `counting` says whether the change enters the stage).

The state is kept in Redis per connection and task, so it survives restarts and is shared by
all workers: the open period's start, the total seconds, the latest change seen, and the changes
already counted (so a redelivered change counts once). The only vendor call is set_fields.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from connectors.base import Entity
from pipeline.steps.base import StepContext, require

METHOD = "track_time"
REQUIRES = frozenset({"set_fields"})
ONE_CLIENT = True   # every call goes through the action's own client (it reports its sends)
STATE_TTL = 400 * 24 * 3600  # the state outlives a year-long task


def run(ctx: StepContext, entity: Entity, counting: bool, at: str, change: str, field: str,
        decimals: int = 2) -> dict[str, Any]:
    """Open or close a period; write the task's total hours when one closes:
    {"total_hours", "open_since", "closed", "repeat"}. A second "entered" while a period is open
    keeps the first start; a change older than the latest one seen (a late delivery) is ignored."""
    require(ctx, METHOD, REQUIRES)
    key = ctx.rt.keys("timetrack", ctx.connection, str(entity))
    seen_key = f"{key}:seen"
    moment = datetime.fromisoformat(at)

    def update(pipe) -> tuple[float, str | None, bool, bool]:
        state = {k.decode(): v.decode() for k, v in pipe.hgetall(key).items()}
        seen = bool(pipe.sismember(seen_key, change))
        opened, total, closed = state.get("open") or None, float(state.get("total") or 0), False
        latest = state.get("latest")
        if not seen and not (latest and moment < datetime.fromisoformat(latest)):
            if counting and not opened:
                opened = moment.isoformat()
            elif not counting and opened:
                total += max(0.0, (moment - datetime.fromisoformat(opened)).total_seconds())
                opened, closed = None, True
            latest = moment.isoformat()
        pipe.multi()
        pipe.hset(key, mapping={"open": opened or "", "total": repr(total), "latest": latest or ""})
        pipe.sadd(seen_key, change)
        pipe.expire(key, STATE_TTL)
        pipe.expire(seen_key, STATE_TTL)
        return total, opened, closed, seen

    total, opened, closed, seen = ctx.rt.store.transaction(update, key, seen_key, value_from_callable=True)
    hours = round(total / 3600, decimals)
    if not counting and (closed or (seen and total > 0)):  # a re-run writes the same total again
        ctx.client.set_fields(entity, {field: hours})
    return {"total_hours": hours, "open_since": opened, "closed": closed, "repeat": seen}
