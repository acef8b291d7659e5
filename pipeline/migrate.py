"""The history store's schema, kept by Alembic (migrations/): brought to the newest revision when
a store is opened, on PostgreSQL and on SQLite alike.

A store that is already at HEAD costs one query on the connection it opens anyway: Alembic (and
SQLAlchemy, which it runs on) are imported only when there is something to do. Otherwise, in one
transaction that holds every other opener back (PostgreSQL: an advisory lock; SQLite: BEGIN
IMMEDIATE, the database's write lock), every revision newer than the database's is applied. A
database made before migrations existed (the tables of revision 0001, no version table) is taken
over as it is: revision 0001 creates only what is missing (`IF NOT EXISTS`), so its tables and rows
stay, and a half-made one is completed. Alembic's public API only: `command.upgrade` with a Config
built here.

A schema change is a new file in migrations/versions (`revision = "0003"`, `down_revision = "0002"`,
plain SQL through `op.execute`, for both dialects: `op.get_bind().dialect.name`), and HEAD here
set to it (tests/test_migrations.py fails until it is).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("crmbridge.history")

HEAD = "0002"   # the newest revision in migrations/versions (tests/test_migrations.py checks they agree)
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "crmbridge_schema_version"
LOCK = 16016    # PostgreSQL advisory lock of the store's schema changes
# Alembic's `context` is one per process (a module-level proxy set up and torn down around each
# run): two threads migrating at once (a worker's history writer and a job's fact store, both
# opening a new database at start) would tear it down under each other. One at a time here.
_IN_PROCESS = threading.Lock()


def version(conn: Any) -> str | None:
    """The revision a database is at (None: never migrated), on a DB-API connection (sqlite3 or psycopg
    in autocommit mode)."""
    try:
        rows = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    except sqlite3.OperationalError:
        return None
    except Exception as exc:   # psycopg's UndefinedTable; anything else is the caller's
        if type(exc).__name__ != "UndefinedTable":
            raise
        return None
    return rows[0][0] if rows else None


def ensure(conn: Any, url: str) -> bool:
    """Bring the database behind `conn` (a DB-API connection the store keeps) to HEAD; `url` is
    the same database for SQLAlchemy. True when migrations ran."""
    if version(conn) == HEAD:
        return False
    with _IN_PROCESS:
        upgrade(url)   # upgrades nothing when another thread just did
    return True


def sqlalchemy_url(database_url: str) -> str:
    """DATABASE_URL (postgresql://…) for SQLAlchemy's psycopg 3 dialect."""
    for scheme in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if database_url.startswith(scheme):
            return "postgresql+psycopg://" + database_url[len(scheme):]
    return database_url


def config(connection: Any) -> Any:
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str) -> None:
    """Apply every revision newer than the database's (one transaction, one opener at a time)."""
    import sqlalchemy
    from alembic import command
    from sqlalchemy.pool import NullPool

    sqlite = url.startswith("sqlite")
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, **({"connect_args": {"timeout": 30}} if sqlite else {}))
    if sqlite:   # SQLAlchemy's own recipe: pysqlite leaves DDL outside transactions unless told
        @sqlalchemy.event.listens_for(engine, "connect")
        def _autocommit_driver(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        @sqlalchemy.event.listens_for(engine, "begin")
        def _write_lock(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        with engine.begin() as conn:
            if not sqlite:
                conn.execute(sqlalchemy.text(f"SELECT pg_advisory_xact_lock({LOCK})"))
            tables = sqlalchemy.inspect(conn)
            if not tables.has_table(VERSION_TABLE) and tables.has_table("crmbridge_events"):
                log.info("decision history made before migrations: taken over at revision 0001")
            command.upgrade(config(conn), "head")
    finally:
        engine.dispose()
