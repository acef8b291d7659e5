"""The decision history as the first store made it (pipeline/history.py before migrations,
SCHEMA_VERSION 1): events and decisions with their indexes. `IF NOT EXISTS` throughout, so that a
database that code made is taken over as it is (pipeline/migrate.py stamps it at this revision).

Revision ID: 0001
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TABLES = """
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
CREATE INDEX IF NOT EXISTS crmbridge_decisions_at ON crmbridge_decisions (at)
"""
TYPES = {"postgresql": {"ts": "timestamptz", "json": "jsonb", "serial": "bigserial"},
         "sqlite": {"ts": "TEXT", "json": "TEXT", "serial": "INTEGER"}}


def upgrade() -> None:
    types = TYPES[op.get_bind().dialect.name]
    for statement in TABLES.format(**types).split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS crmbridge_decisions")
    op.execute("DROP TABLE IF EXISTS crmbridge_events")
