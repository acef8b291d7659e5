"""Create pending timers through crmbridge's own `RQBackend.schedule`.

`python bench/timers.py FIRST COUNT` (crmbridge's environment: REDIS_URL, CRMBRIDGE_CONFIG…)
schedules COUNT timers for leads FIRST, FIRST+1, … due 30 days from now, under a rule id no
rule file has ("bench-filler"): they only sit there, as a busy account's reminders would.
Each timer is a `rules.engine.PlannedTimer` turned into a dict by `pipeline.timers.as_dict`, with
the event of a real amoCRM status webhook inside, exactly what the worker schedules.
bench/run.py runs a few of these in parallel and then schedules the few timers that are due
soon (for the real "Bench - timer" rule) itself, with `due_timers()` below.
"""
from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import timers  # noqa: E402  (after the path)
sys.path.insert(0, str(ROOT / "bench"))

FILLER_RULE_ID = "bench-filler"


def sample_event(rt: Any, lead: int) -> dict[str, Any]:
    """The event of the recorded amoCRM webhook, about `lead`, as the connector parses it."""
    from common import Webhooks

    from connectors import CONNECTORS
    from connectors.base import RawWebhook

    conn = rt.connections.connections["quickstart-amo"]
    raw = RawWebhook(headers={}, content_type="application/x-www-form-urlencoded",
                     body=Webhooks().body(lead), query={})
    return CONNECTORS[conn.type].parse(raw, conn)[0].to_dict()


def planned(rule_name: str, rule_id: str, lead: int, fire_at: datetime, event: dict[str, Any]) -> dict[str, Any]:
    from rules.engine import PlannedTimer

    entity = {"type": "lead", "id": str(lead)}
    timer = PlannedTimer(rule=rule_name, rule_id=rule_id,
                         timer_id=f"timer:{rule_id}:quickstart-amo:lead:{lead}",
                         fire_at=fire_at.isoformat(), entity=entity,
                         event={**event, "entity": entity, "id": f"{event['id']}-{lead}"})
    return timers.as_dict(timer)


def fill(rt: Any, first: int, count: int) -> float:
    """Schedule `count` far-off filler timers; return the seconds it took."""
    event = sample_event(rt, first)
    base = datetime.now(UTC) + timedelta(days=30)
    t0 = time.perf_counter()
    for n in range(count):
        lead = first + n
        rt.backend.schedule(planned("bench filler", FILLER_RULE_ID, lead,
                                    base + timedelta(seconds=n % 86400), event))
    return time.perf_counter() - t0


def due_timers(rt: Any, rule_name: str, rule_id: str, first: int, count: int, lead_in: float,
               window: float) -> dict[str, float]:
    """Schedule `count` timers of a real rule due between now+lead_in and now+lead_in+window
    (fractional seconds, spread at random). Returns {lead id: fire_at as a unix time}."""
    event = sample_event(rt, first)
    start = time.time() + lead_in
    due: dict[str, float] = {}
    for n in range(count):
        lead = first + n
        at = start + random.uniform(0, window)
        rt.backend.schedule(planned(rule_name, rule_id, lead, datetime.fromtimestamp(at, UTC), event))
        due[str(lead)] = at
    return due


if __name__ == "__main__":
    import json

    import worker
    count = int(sys.argv[2])
    print(json.dumps({"count": count, "seconds": fill(worker.runtime(), int(sys.argv[1]), count)}))
