"""The decision history store on both backends: rows in, a record's timeline out in order, kept
bodies without secrets, retention, and a database that does not answer never failing a job."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from config.settings import Settings
from connectors.base import Entity, Event
from pipeline import history
from pipeline.history import PostgresHistory, open_history
from tests.history_db import history_settings  # noqa: F401  (a fixture)

T0 = datetime(2026, 12, 1, 10, 2, tzinfo=UTC)


def event(ident="amo:1", kind="stage.changed", lead="123", **data) -> Event:
    return Event(id=ident, connection="amo", source="amocrm", kind=kind, entity=Entity("lead", lead),
                 data=data, raw={"leads": {"status": [{"id": lead, "status_id": "10"}]},
                                 "account": {"subdomain": "demo"}, "access_token": "s3cr3t"},
                 occurred_at=T0.isoformat())


def store(overrides):
    return open_history(Settings(history_retention=14 * 24 * 3600, **overrides))


def test_a_records_timeline_comes_back_in_order_with_its_event_first(history_settings):
    h = store(history_settings)
    ev = event()
    assert h.write([history.event_row(ev, {"fields": {"Budget": 0}}, T0)],
                   [history.decision_row(ev, "rule.skipped", {"rule": "Brief → task", "reason": "field 'Budget' is 0",
                                                              "key": {"field": "Budget", "gt": 0}}, T0),
                    history.decision_row(ev, "rule.matched", {"rule": "Notice", "reason": "trigger and conditions hold"}, T0),
                    history.decision_row(ev, "action.done", {"rule": "Notice", "action": "bot.send_message(chat='-1')",
                                                             "result": {"message_id": 7}}, T0 + timedelta(seconds=1))])
    other = event("amo:2", lead="124")
    h.write([history.event_row(other, {}, T0)], [history.decision_row(other, "rule.matched", {"rule": "Notice"}, T0)])
    entries = h.timeline("lead:123")
    assert [(e.what, e.rule) for e in entries] == [("event", "stage.changed"), ("rule.skipped", "Brief → task"),
                                                   ("rule.matched", "Notice"), ("action.done", "Notice")]
    assert entries[1].detail["key"] == {"field": "Budget", "gt": 0} and entries[0].at == T0
    assert entries[3].detail["result"] == {"message_id": 7}
    assert [e.what for e in h.timeline("lead:123", since=T0 + timedelta(seconds=1))] == ["action.done"]
    assert h.timeline("lead:123", connection="bitrix") == []
    h.close()


def test_a_kept_body_has_no_secrets_and_an_event_is_kept_once(history_settings):
    h = store(history_settings)
    ev = event(Authorization="Bearer abc")
    assert h.write([history.event_row(ev, {"name": "Ромашка"}, T0)], [])
    assert h.write([history.event_row(ev, {"name": "Ромашка"}, T0 + timedelta(seconds=5))], [])  # a re-run job
    kept = h.event("amo:1")
    assert kept["record"] == {"name": "Ромашка"}
    assert kept["event"]["raw"]["access_token"] == "(secret, not kept)"
    assert kept["event"]["data"]["Authorization"] == "(secret, not kept)"
    assert kept["event"]["raw"]["account"] == {"subdomain": "demo"}
    assert "s3cr3t" not in json.dumps(kept) and h.stats()["events"] == 1
    assert h.event("amo:404") is None
    h.close()


def test_retention_removes_what_is_older(history_settings):
    h = store(history_settings)
    old, new = event("amo:old"), event("amo:new")
    h.write([history.event_row(old, {}, T0 - timedelta(days=15))],
            [history.decision_row(old, "rule.matched", {"rule": "r"}, T0 - timedelta(days=15))])
    h.write([history.event_row(new, {}, T0 - timedelta(days=13))],
            [history.decision_row(new, "rule.matched", {"rule": "r"}, T0 - timedelta(days=13))])
    assert h.prune(now=T0) == (1, 1)
    assert [e.event_id for e in h.timeline("lead:123")] == ["amo:new", "amo:new"]
    assert h.stats()["bytes"] > 0
    h.close()


def test_a_database_that_does_not_answer_loses_rows_not_jobs(caplog):
    h = PostgresHistory("postgresql://postgres@127.0.0.1:1/none", retention=3600)
    ev = event()
    assert h.write([history.event_row(ev, {}, T0)], []) is False
    assert "decision history (postgresql) not written" in caplog.text
    assert h.write([history.event_row(ev, {}, T0)], []) is False   # paused: not tried again at once


def test_retention_deletes_in_chunks_and_one_worker_of_all_runs_it(history_settings, monkeypatch, redis_db):
    monkeypatch.setattr(history, "PRUNE_CHUNK", 2)
    h = store(history_settings)
    old = datetime.now(UTC) - timedelta(days=20)
    for n in range(5):
        ev = event(f"amo:{n}")
        h.write([history.event_row(ev, {}, old)], [history.decision_row(ev, "rule.matched", {"rule": "r"}, old)])
    pruning = h.maybe_prune(redis_db, "crmbridge-test:history-prune")
    pruning.join(10)
    assert h.stats()["events"] == 0 and h.stats()["decisions"] == 0
    other = store(history_settings)   # another worker within the hour: the lock is taken, nothing runs
    assert other.maybe_prune(redis_db, "crmbridge-test:history-prune") is None
    assert redis_db.ttl("crmbridge-test:history-prune") > 3000
    h.close()
    other.close()


def test_a_job_hands_its_rows_over_and_never_waits_for_the_database(history_settings, caplog):
    import time
    h = store(history_settings)
    for n in range(30):
        ev = event(f"amo:{n}")
        h.submit([history.event_row(ev, {}, T0)], [history.decision_row(ev, "rule.matched", {"rule": "r"}, T0)])
    assert h.flush()
    assert h.stats() == {**h.stats(), "events": 30, "decisions": 30}
    h.close()
    away = PostgresHistory("postgresql://postgres@10.255.255.1:5432/none", retention=3600)   # no answer
    started = time.monotonic()
    away.submit([history.event_row(event(), {}, T0)], [])
    assert time.monotonic() - started < 0.05
    assert away.flush(timeout=10)
    assert "not written" in caplog.text
