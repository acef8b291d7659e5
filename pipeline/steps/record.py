"""record: store one fact (rules/record.py plans it) in the decision history's database.

Written at once, inside the job, on a connection of its own (not through the history's writer
thread): a fact must not be lost the way a history row may be (a worker killed before its writer
ran, a database away for a while). Its key is the step's (event id | rule | action index) and the
insert does nothing when the key is there, so a repeated event, a re-run job, or a worker killed
after the insert and before the step was recorded done adds nothing (the executor may repeat the
step: REPEATABLE_METHODS). A database that does not answer fails within its timeouts (PostgreSQL:
connect 3 s, statement 5 s; SQLite: 5 s on a locked file) as a RetryableApiError: the job's own
retries, then RQ's, then the dead letters, where a replay records it. No vendor is called.
"""
from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from connectors.base import RetryableApiError
from pipeline import history
from pipeline.steps.base import StepContext

METHOD = "record"
REQUIRES: frozenset[str] = frozenset()   # any connection: no vendor call
ONE_CLIENT = True   # no request leaves: a "calling" mark found later means nothing was sent anywhere

_stores: dict[tuple, history.History] = {}
_stores_lock = threading.Lock()


def store(settings: Any) -> history.History:
    """This process's facts store for these settings (one connection, opened at its first use)."""
    key = (settings.database_url, str(settings.history_file))
    with _stores_lock:
        if key not in _stores:
            _stores[key] = history.open_facts(settings)
        return _stores[key]


def run(ctx: StepContext, metric: str, value: float, dimensions: dict[str, str], at: str, zone: str,
        rule: str, event_id: str, record: str) -> dict[str, Any]:
    """{"recorded": True} when stored now, False when this step's fact was stored before."""
    facts = store(ctx.rt.settings)
    row = history.fact_row(ctx.key, event_id, ctx.connection, record, rule, datetime.fromisoformat(at), zone,
                           metric, value, dimensions)
    try:
        stored = facts.add_fact(row)
    except Exception as exc:   # sqlite3.Error, psycopg.Error: the database, not the fact
        raise RetryableApiError(f"fact {metric!r} not recorded: the {facts.name} store failed: {exc}") from None
    return {"recorded": stored, "metric": metric, "value": value, "day": row[2]}
