"""The console's own reads of the decision history, on SQLite and on the real PostgreSQL: recent
events with their outcome and filters, a connection's last event and last error, records by id."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from config.settings import Settings
from connectors.base import Entity, Event
from console import queries
from pipeline import history
from pipeline.history import open_history
from tests.history_db import history_settings  # noqa: F401  (a fixture)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def event(ident: str, lead: str, kind: str = "stage.changed", connection: str = "amo") -> Event:
    return Event(id=ident, connection=connection, source="amocrm", kind=kind, entity=Entity("lead", lead),
                 data={}, raw={}, occurred_at=T0.isoformat())


def test_recent_events_their_outcomes_and_the_last_error_of_each_connection(history_settings):  # noqa: F811
    h = open_history(Settings(history_retention=14 * 24 * 3600, **history_settings))
    acted, failed, skipped = event("amo:1", "1"), event("amo:2", "2"), event("amo:3", "3", kind="entity.created")
    h.write([history.event_row(acted, {}, T0), history.event_row(failed, {}, T0 + timedelta(seconds=1)),
             history.event_row(skipped, {}, T0 + timedelta(seconds=2))],
            [history.decision_row(acted, "rule.matched", {"rule": "Бриф → задача", "reason": "trigger and conditions hold"}, T0),
             history.decision_row(acted, "action.done", {"rule": "Бриф → задача", "action": "amo.create_task()"}, T0),
             history.decision_row(failed, "rule.matched", {"rule": "Notice"}, T0 + timedelta(seconds=1)),
             history.decision_row(failed, "action.failed", {"rule": "Notice", "action": "bot.send_message(chat='-1')",
                                                            "error": "HTTP 403: bot was kicked"}, T0 + timedelta(seconds=1)),
             history.decision_row(skipped, "rule.skipped", {"rule": "Бриф → задача", "reason": "stage is 'New', not 'Brief'"},
                                  T0 + timedelta(seconds=2))])

    found = queries.recent_events(h)
    assert [(e.record, e.outcome) for e in found] == [("lead:3", "nothing matched"), ("lead:2", "failed"), ("lead:1", "acted")]
    assert [e.record for e in queries.recent_events(h, outcome="acted")] == ["lead:1"]
    assert [e.record for e in queries.recent_events(h, kind="entity.created")] == ["lead:3"]
    by_rule = queries.recent_events(h, rule="Бриф → задача")
    assert [(e.record, e.rule_outcome("Бриф → задача")) for e in by_rule] == [
        ("lead:3", "skipped: stage is 'New', not 'Brief'"), ("lead:1", "matched")]
    assert queries.recent_events(h, connection="bitrix") == [] and len(queries.recent_events(h, limit=2)) == 2
    assert queries.kinds(h) == ["entity.created", "stage.changed"]

    assert queries.last_event(h, "amo")["record"] == "lead:3" and queries.last_event(h, "bot") is None
    # the Telegram send failed on an amoCRM event: the bot's error, not amoCRM's
    assert queries.last_error(h, "bot")["error"] == "HTTP 403: bot was kicked"
    assert queries.last_error(h, "amo") is None
    assert queries.records_with_id(h, "2") == ["lead:2"] and queries.records_with_id(h, "9") == []
    h.close()
