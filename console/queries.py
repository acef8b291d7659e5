"""What the console reads from the decision history (pipeline/history.py) beyond a record's
timeline: recent events per connection with their outcome, a connection's last event and last
error, records by a bare id. Plain SQL on the store's `query` (SQLite and PostgreSQL alike)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FAILED = ("action.failed", "action.uncertain", "action.unsettled", "rule.error", "enrich.failed")
OUTCOMES = ("acted", "failed", "matched", "nothing matched")
# entity types the connectors name records by: a bare id is looked up as each of them
RECORD_TYPES = ("lead", "deal", "contact", "company", "task", "project", "chat", "conversation", "call",
                "form", "response")


@dataclass
class EventSummary:
    """One kept event and what its decisions came to."""
    event_id: str
    at: datetime
    connection: str
    kind: str
    record: str
    matched: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)     # rule → why not
    done: int = 0
    failed: int = 0

    @property
    def outcome(self) -> str:
        if self.failed:
            return "failed"
        if self.done:
            return "acted"
        return "matched" if self.matched else "nothing matched"

    def rule_outcome(self, rule: str) -> str | None:
        if rule in self.matched:
            return "matched"
        return f"skipped: {self.skipped[rule]}" if rule in self.skipped else None


def recent_events(history: Any, *, connection: str | None = None, kind: str | None = None,
                  outcome: str | None = None, rule: str | None = None, limit: int = 100) -> list[EventSummary]:
    """The newest kept events, newest first, filtered by connection and kind in the database and by
    outcome and rule (an event where that rule was considered) on what their decisions say."""
    where, params = [], []
    if connection:
        where.append("connection = ?")
        params.append(connection)
    if kind:
        where.append("kind = ?")
        params.append(kind)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    looked = limit * 5 if outcome or rule else limit   # filtered after: look further back
    rows = history.query(f"SELECT event_id, at, connection, kind, record FROM crmbridge_events {clause}"
                         f"ORDER BY at DESC LIMIT {int(looked)}", tuple(params))
    events = {r[0]: EventSummary(r[0], history.dt(r[1]), r[2], r[3], r[4]) for r in rows}
    for event_id, what, name, detail in _decisions(history, list(events)):
        summary = events[event_id]
        if what == "rule.matched" and name:
            summary.matched.append(name)
        elif what == "rule.skipped" and name:
            summary.skipped[name] = str(history.js(detail).get("reason") or "")
        elif what == "action.done":
            summary.done += 1
        elif what in FAILED:
            summary.failed += 1
    found = [e for e in events.values()
             if (not outcome or e.outcome == outcome) and (not rule or e.rule_outcome(rule) is not None)]
    return found[:limit]


def _decisions(history: Any, event_ids: list[str]) -> list[tuple]:
    found = []
    for start in range(0, len(event_ids), 200):
        chunk = event_ids[start:start + 200]
        found += history.query("SELECT event_id, what, rule, detail FROM crmbridge_decisions WHERE event_id IN "
                               f"({', '.join('?' * len(chunk))}) ORDER BY id", tuple(chunk))
    return found


def kinds(history: Any) -> list[str]:
    """The event kinds kept, for the filter's choices."""
    return [r[0] for r in history.query("SELECT DISTINCT kind FROM crmbridge_events ORDER BY kind")]


def last_event(history: Any, connection: str) -> dict[str, Any] | None:
    """The connection's newest kept event (the last webhook or catch-up a worker planned)."""
    rows = history.query("SELECT event_id, at, kind, record FROM crmbridge_events WHERE connection = ? "
                         "ORDER BY at DESC LIMIT 1", (connection,))
    return {"event_id": rows[0][0], "at": history.dt(rows[0][1]), "kind": rows[0][2], "record": rows[0][3]} if rows else None


def last_error(history: Any, connection: str, looked: int = 500) -> dict[str, Any] | None:
    """The connection's newest failure among the latest `looked` failures of all: an action on it
    that failed or is uncertain (whichever connection's event led to it), or a rule error or failed
    read of one of its events."""
    rows = history.query(f"SELECT at, event_id, record, what, rule, detail, connection FROM crmbridge_decisions "
                         f"WHERE what IN ({', '.join('?' * len(FAILED))}) ORDER BY at DESC LIMIT {int(looked)}", FAILED)
    for at, event_id, record, what, rule, detail, source in rows:
        detail = history.js(detail)
        action = str(detail.get("action") or "")
        if action.startswith(f"{connection}.") if action else source == connection:
            return {"at": history.dt(at), "event_id": event_id, "record": record, "what": what, "rule": rule,
                    "error": detail.get("error") or detail.get("reason") or ""}
    return None


def records_with_id(history: Any, bare_id: str) -> list[str]:
    """Records kept whose id is `bare_id`, whatever their type (lead:123, task:123, …)."""
    candidates = [f"{t}:{bare_id}" for t in RECORD_TYPES]
    rows = history.query(f"SELECT DISTINCT record FROM crmbridge_events WHERE record IN "
                         f"({', '.join('?' * len(candidates))})", tuple(candidates))
    return sorted(r[0] for r in rows)


def group_timeline(entries: list) -> list[dict[str, Any]]:
    """A record's timeline as events, each with the decisions made about it (in order); decisions
    whose event is not kept (pruned, or a timer's firing) form a group of their own."""
    groups: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.what == "event":
            group = {"event": entry, "decisions": []}
            by_id[entry.event_id] = group
            groups.append(group)
        elif entry.event_id in by_id:
            by_id[entry.event_id]["decisions"].append(entry)
        else:
            group = {"event": None, "event_id": entry.event_id, "at": entry.at, "decisions": [entry]}
            by_id[entry.event_id] = group
            groups.append(group)
    return groups
