"""The history store's schema under Alembic, on SQLite and the real PostgreSQL: a fresh database is
brought to the newest revision when the store opens it, a database the store made before
migrations (revision 0001's tables, no version table) is taken over with its rows, and openers
racing each other migrate once."""
from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime

from alembic.script import ScriptDirectory

from config.settings import Settings
from connectors.base import Entity, Event
from pipeline import history, migrate
from pipeline.history import open_facts, open_history
from tests.history_db import history_settings  # noqa: F401  (a fixture)

T0 = datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
# what pipeline/history.py ran at every open before migrations (SCHEMA_VERSION 1), verbatim
OLD_TABLES = """
CREATE TABLE IF NOT EXISTS crmbridge_events (
    event_id   TEXT PRIMARY KEY,
    at         {ts} NOT NULL,
    connection TEXT NOT NULL,
    kind       TEXT NOT NULL,
    record     TEXT NOT NULL,
    body       {json} NOT NULL
);
CREATE INDEX IF NOT EXISTS crmbridge_events_record ON crmbridge_events (record, at);
CREATE INDEX IF NOT EXISTS crmbridge_events_connection ON crmbridge_events (connection, at);
CREATE TABLE IF NOT EXISTS crmbridge_decisions (
    id         {serial} PRIMARY KEY,
    at         {ts} NOT NULL,
    event_id   TEXT NOT NULL,
    connection TEXT NOT NULL,
    record     TEXT NOT NULL,
    what       TEXT NOT NULL,
    rule       TEXT,
    detail     {json} NOT NULL
);
CREATE INDEX IF NOT EXISTS crmbridge_decisions_record ON crmbridge_decisions (record, at);
CREATE INDEX IF NOT EXISTS crmbridge_decisions_at ON crmbridge_decisions (at);
"""


def event(ident: str = "amo:1") -> Event:
    return Event(id=ident, connection="amo", source="amocrm", kind="stage.changed", entity=Entity("lead", "123"),
                 data={}, raw={}, occurred_at=T0.isoformat())


def settings_for(overrides: dict) -> Settings:
    return Settings(history_retention=14 * 24 * 3600, **overrides)


def old_store(overrides: dict) -> None:
    """A database as the store made it before migrations, with an event and a decision in it."""
    if "database_url" in overrides:
        import psycopg
        with psycopg.connect(overrides["database_url"], autocommit=True) as conn:
            for statement in OLD_TABLES.format(ts="timestamptz", json="jsonb", serial="bigserial").split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO crmbridge_events VALUES ('amo:old', %s, 'amo', 'stage.changed', 'lead:123', '{}')", (T0,))
            conn.execute("INSERT INTO crmbridge_decisions (at, event_id, connection, record, what, rule, detail) "
                         "VALUES (%s, 'amo:old', 'amo', 'lead:123', 'rule.matched', 'Old rule', '{}')", (T0,))
        return
    conn = sqlite3.connect(overrides["history_path"], isolation_level=None)
    conn.executescript(OLD_TABLES.format(ts="TEXT", json="TEXT", serial="INTEGER"))
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO crmbridge_events VALUES ('amo:old', ?, 'amo', 'stage.changed', 'lead:123', '{}')",
                 (T0.isoformat(timespec="microseconds"),))
    conn.execute("INSERT INTO crmbridge_decisions (at, event_id, connection, record, what, rule, detail) "
                 "VALUES (?, 'amo:old', 'amo', 'lead:123', 'rule.matched', 'Old rule', '{}')",
                 (T0.isoformat(timespec="microseconds"),))
    conn.close()


def test_head_is_the_newest_revision_of_migrations():
    assert ScriptDirectory.from_config(migrate.config(None)).get_current_head() == migrate.HEAD


def test_a_fresh_database_is_migrated_once_when_the_store_opens(history_settings):
    h = open_history(settings_for(history_settings))
    assert h.write([history.event_row(event(), {}, T0)], [])
    assert h.query(f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [(migrate.HEAD,)]
    url = (migrate.sqlalchemy_url(history_settings["database_url"]) if "database_url" in history_settings
           else f"sqlite:///{history_settings['history_path']}")
    with h._lock:
        assert migrate.ensure(h._open(), url) is False   # at HEAD: one query, no Alembic
    assert h.stats()["events"] == 1
    h.close()


def test_a_database_made_before_migrations_keeps_its_rows_and_gets_facts(history_settings):
    old_store(history_settings)
    h = open_history(settings_for(history_settings))
    assert [(e.event_id, e.what, e.rule) for e in h.timeline("lead:123")] == [
        ("amo:old", "event", "stage.changed"), ("amo:old", "rule.matched", "Old rule")]
    assert h.write([history.event_row(event("amo:new"), {}, T0)],
                   [history.decision_row(event("amo:new"), "rule.matched", {"rule": "New rule"}, T0)])
    assert [e.rule for e in h.timeline("lead:123") if e.what == "rule.matched"] == ["Old rule", "New rule"]
    assert h.query(f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [(migrate.HEAD,)]
    facts = open_facts(settings_for(history_settings))
    row = history.fact_row("amo:new|r1|0", "amo:new", "amo", "lead:123", "r", T0, "Europe/Kyiv", "deals", 1, {})
    assert facts.add_fact(row) is True and facts.add_fact(row) is False
    h.close()
    facts.close()


def test_a_half_made_old_database_is_completed(tmp_path):
    path = tmp_path / "half.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    made = OLD_TABLES.format(ts="TEXT", json="TEXT", serial="INTEGER")
    conn.executescript(made.split("CREATE TABLE IF NOT EXISTS crmbridge_decisions")[0])   # stopped half-way
    conn.close()
    h = open_history(settings_for({"history_path": path}))
    assert h.write([history.event_row(event(), {}, T0)], [history.decision_row(event(), "rule.matched", {"rule": "r"}, T0)])
    assert h.stats() == {"events": 1, "decisions": 1, "bytes": h.size()}
    h.close()


def test_openers_racing_each_other_migrate_once(history_settings):
    stores = [open_history(settings_for(history_settings)) for _ in range(4)]
    failures: list[BaseException] = []

    def open_one(store) -> None:
        try:
            store.query("SELECT count(*) FROM crmbridge_facts")
        except BaseException as exc:   # noqa: BLE001 - reported below
            failures.append(exc)
    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert stores[0].query(f"SELECT version_num FROM {migrate.VERSION_TABLE}") == [(migrate.HEAD,)]
    for s in stores:
        s.close()


def test_two_databases_migrated_at_once_in_one_process(tmp_path):
    """A worker opens its history and its fact store at start, in two threads: on new databases both
    migrate at the same moment, and Alembic's context is one per process (it failed with 'config')."""
    import sqlite3
    files = [tmp_path / f"db{i}.sqlite3" for i in range(6)]
    failures: list[BaseException] = []
    start = threading.Barrier(len(files))

    def migrate_one(path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            start.wait(10)
            migrate.ensure(conn, f"sqlite:///{path}")
        except BaseException as exc:   # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            conn.close()
    threads = [threading.Thread(target=migrate_one, args=(p,)) for p in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    for path in files:
        with sqlite3.connect(path) as conn:
            assert migrate.version(conn) == migrate.HEAD
