"""Facts for reports (the `record` action, reports/): one row per recorded fact, keyed by the
step that recorded it (event id | rule | action index), so a repeated event or a re-run job
records once (INSERT … ON CONFLICT DO NOTHING).

    fact_id     the recording step's key
    at          the event's moment (UTC instant)
    day         that moment's date in the rule calendar's zone (YYYY-MM-DD): what reports filter
                and group by, so a day is the integrator's day, not UTC's
    zone        that calendar's zone (IANA name)
    metric      the metric's name
    value       the number recorded
    dimensions  {name: text}: account, manager, pipeline, source…
    event_id, connection, record, rule: where it came from

Revision ID: 0002
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE crmbridge_facts (
    fact_id     TEXT PRIMARY KEY,
    at          {ts} NOT NULL,
    day         TEXT NOT NULL,
    zone        TEXT NOT NULL,
    metric      TEXT NOT NULL,
    value       {number} NOT NULL,
    dimensions  {json} NOT NULL,
    event_id    TEXT NOT NULL,
    connection  TEXT NOT NULL,
    record      TEXT NOT NULL,
    rule        TEXT NOT NULL
);
CREATE INDEX crmbridge_facts_metric_day ON crmbridge_facts (metric, day)
"""
TYPES = {"postgresql": {"ts": "timestamptz", "json": "jsonb", "number": "double precision"},
         "sqlite": {"ts": "TEXT", "json": "TEXT", "number": "REAL"}}


def upgrade() -> None:
    types = TYPES[op.get_bind().dialect.name]
    for statement in TABLE.format(**types).split(";"):
        if statement.strip():
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS crmbridge_facts")
