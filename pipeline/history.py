"""The decision history: every event a worker planned and every decision about it, kept outside
Redis, queryable by record and by connection and time (cli.py timeline / explain / replay-event).

PostgreSQL when DATABASE_URL is set, else SQLite (a file: CRMBRIDGE_HISTORY_PATH, default
`crmbridge-history.sqlite3` beside the configuration directory). Three tables:

    crmbridge_events     one row per planned event: connection, kind, record, and its body (the
                         event as parsed, and the record as the rules saw it; secrets removed)
    crmbridge_decisions  one row per decision: rule matched / skipped (and why), action done /
                         failed, timer set / cancelled / fired / skipped, and the rest of the audit
    crmbridge_facts      the `record` action's facts (pipeline/steps/record.py; reports/), kept
                         until removed by hand: retention does not touch them

The schema is Alembic's (migrations/; pipeline/migrate.py brings a database to the newest
revision when the store opens it).

A job's rows are handed over when the job ends (pipeline/audit.batch) to a writer thread of the
worker process, which writes what jobs left meanwhile in one transaction: one round trip to
PostgreSQL (a single statement, `synchronous_commit=off`: an audit trail may lose its last fraction
of a second on a database crash). A job never waits for the database: a database that does not
answer makes the writer pause for a while and drop rows with a warning; a worker killed loses the
rows it had not written yet (a fraction of a second's; its Redis audit stream has them). Rows older than the retention (14 days by default)
are removed by `prune`, which a worker runs about once an hour (`maybe_prune`) and
`cli.py history prune` on demand. Nothing here runs in the webhook path: the store is opened at a
job's first write.
"""
from __future__ import annotations

import atexit
import collections
import json
import logging
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline import migrate

log = logging.getLogger("crmbridge.history")

BODY_MAX = 64 * 1024     # characters of an event's body kept; a larger one keeps its data, not its raw
PAUSE = 30.0             # seconds writes pause after the database failed
PRUNE_EVERY = 3600       # seconds between two retention passes (one worker of all does it)
PRUNE_CHUNK = 5000       # rows deleted per transaction by a retention pass
QUEUE_MAX = 10_000       # jobs' rows a process holds for its writer thread at most
BATCH_MAX = 200          # jobs' rows the writer thread writes in one transaction at most
LINGER = 0.05            # seconds the writer waits for more jobs' rows before it writes
SECRET_KEY = re.compile(r"token|secret|passw|signature|api_?key|authori[sz]ation|cookie|credential", re.I)
SECRET_WORDS = ("token", "secret", "passw", "signature", "apikey", "api_key", "authoriz", "authoris", "cookie",
                "credential")   # SECRET_KEY's words: a plain search of a whole body is 20× faster than the regex

EVENT_COLUMNS = "event_id, at, connection, kind, record, body"
DECISION_COLUMNS = "at, event_id, connection, record, what, rule, detail"
FACT_COLUMNS = "fact_id, at, day, zone, metric, value, dimensions, event_id, connection, record, rule"
AGGREGATES = {"sum": "sum(value)", "count": "count(*)", "avg": "avg(value)", "min": "min(value)", "max": "max(value)"}
PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")   # p50, p90, p99.9: a percentile aggregate, 0 < N < 100
PERIODS = {"day": "day", "month": "substr(day, 1, 7)"}   # time dimensions every fact has (its local date)


@dataclass(frozen=True)
class Entry:
    """One row of a record's timeline: an event (`what` = "event") or a decision."""
    at: datetime
    event_id: str
    connection: str
    record: str
    what: str
    rule: str | None
    detail: dict[str, Any]


# --- rows, as the audit makes them ------------------------------------------------------------------

def record_of(event: Any) -> str:
    """The record an event is about: a Telegram press or message bound to a CRM record is that
    record's (pipeline/links.py puts it in data.record), anything else its own entity."""
    bound = event.data.get("record") if isinstance(event.data, dict) else None
    if isinstance(bound, dict) and bound.get("type") and bound.get("id"):
        return f"{bound['type']}:{bound['id']}"
    return str(event.entity)


def redact(value: Any) -> Any:
    """The value without secrets: a key that names a token, secret, password or signature keeps
    its name, not its value."""
    if isinstance(value, dict):
        return {k: "(secret, not kept)" if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _mentions_secret(text: str) -> bool:
    low = text.lower()
    return any(word in low for word in SECRET_WORDS)


def event_row(event: Any, view: dict[str, Any] | None, at: datetime, derived: bool = False) -> tuple:
    """The event as parsed (its `raw` is the vendor's body, parsed) and the record as the rules saw
    it, secrets removed: enough to plan it again (cli.py replay-event)."""
    body = {"event": event.to_dict(), "record": view or {}, "derived": derived}
    text = json.dumps(body, ensure_ascii=False, default=str)
    if _mentions_secret(text):   # walked only when a key (or a value) names a secret: most bodies do not
        body = redact(body)
        text = json.dumps(body, ensure_ascii=False, default=str)
    if len(text) > BODY_MAX:
        body = {**body, "event": {**body["event"], "raw": f"({len(text)} characters: too large to keep)"}}
        text = json.dumps(body, ensure_ascii=False, default=str)
    return (event.id, at, event.connection, event.kind, record_of(event), text)


def fact_row(key: str, event_id: str, connection: str, record: str, rule: str, at: datetime, zone: str,
             metric: str, value: float, dimensions: dict[str, str]) -> tuple:
    """A fact of the `record` action: `key` the recording step's (event id | rule | action index),
    `at` its moment, dated in the calendar's `zone`."""
    from zoneinfo import ZoneInfo
    day = at.astimezone(ZoneInfo(zone)).date().isoformat()
    return (key, at, day, zone, metric, float(value), json.dumps(dimensions, ensure_ascii=False, sort_keys=True),
            event_id, connection, record, rule)


def decision_row(event: Any, what: str, details: dict[str, Any], at: datetime) -> tuple:
    rule = details.get("rule")
    detail = {k: v for k, v in details.items() if k != "rule"}
    text = json.dumps(detail, ensure_ascii=False, default=str)
    if _mentions_secret(text):
        text = json.dumps(redact(detail), ensure_ascii=False, default=str)
    return (at, event.id, event.connection, record_of(event), what, str(rule) if rule is not None else None, text)


# --- the store -----------------------------------------------------------------------------------

class History:
    """A database of decisions; opened at its first use, safe to share between a process's threads."""

    durable = False   # True for the facts store: a commit is on disk before a step is recorded done

    def __init__(self, retention: int) -> None:
        self.retention = retention
        self._lock = threading.Lock()
        self._conn: Any = None
        self._paused_until = 0.0
        self._next_prune = 0.0
        self._pending: collections.deque[tuple[list[tuple], list[tuple]]] = collections.deque()
        self._wake = threading.Condition()
        self._busy = False
        self._writer: threading.Thread | None = None

    def submit(self, events: list[tuple], decisions: list[tuple]) -> None:
        """A job's rows, handed to this process's writer thread: the job goes on at once, whatever
        the database does. The writer writes what is pending together, each job's rows in the same
        transaction; beyond QUEUE_MAX pending jobs (a database far behind) the oldest are dropped."""
        if not events and not decisions:
            return
        with self._wake:
            if len(self._pending) >= QUEUE_MAX:
                dropped = self._pending.popleft()
                log.warning("decision history %d jobs behind: a job's %d row(s) dropped", QUEUE_MAX,
                            len(dropped[0]) + len(dropped[1]))
            self._pending.append((events, decisions))
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_pending, name="crmbridge-history", daemon=True)
                self._writer.start()
                atexit.register(self.flush)
            self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every submitted row is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._wake:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    def _write_pending(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                self._busy = True
            time.sleep(LINGER)   # let the jobs ending meanwhile join: one statement for several jobs
            with self._wake:
                jobs = [self._pending.popleft() for _ in range(min(len(self._pending), BATCH_MAX))]
            try:
                self.write([row for events, _ in jobs for row in events], [row for _, rows in jobs for row in rows])
            finally:
                with self._wake:
                    self._busy = False
                    self._wake.notify_all()

    # each backend: _connect(), _write(events, decisions), _query(sql, params), ts(dt), name
    def write(self, events: list[tuple], decisions: list[tuple]) -> bool:
        """Write a job's rows in one transaction; False (and a warning) if the database failed."""
        if not events and not decisions:
            return True
        if time.monotonic() < self._paused_until:
            return False
        try:
            with self._lock:
                self._write(self._open(), events, decisions)
            return True
        except Exception as exc:
            self._paused_until = time.monotonic() + PAUSE
            log.warning("decision history (%s) not written, %d event(s) and %d decision(s) lost; writes pause %.0f s: %s",
                        self.name, len(events), len(decisions), PAUSE, exc)
            self._reset()
            return False

    def _open(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _reset(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:
            pass
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._reset()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._query(self._open(), sql, params)

    def timeline(self, record: str, connection: str | None = None, since: datetime | None = None) -> list[Entry]:
        """The record's events and decisions, oldest first (an event before its decisions)."""
        where, params = ["record = ?"], [record]
        if connection:
            where.append("connection = ?")
            params.append(connection)
        if since:
            where.append("at >= ?")
            params.append(self.ts(since))
        clause = " AND ".join(where)
        entries = [Entry(self.dt(at), event_id, conn, rec, "event", kind, self.js(body))
                   for event_id, at, conn, kind, rec, body in self.query(
                       f"SELECT {EVENT_COLUMNS} FROM crmbridge_events WHERE {clause}", tuple(params))]
        entries += [Entry(self.dt(at), event_id, conn, rec, what, rule, self.js(detail))
                    for at, event_id, conn, rec, what, rule, detail in self.query(
                        f"SELECT {DECISION_COLUMNS} FROM crmbridge_decisions WHERE {clause} ORDER BY id", tuple(params))]
        return sorted(entries, key=lambda e: (e.at, e.what != "event"))   # stable: decisions keep their order

    def event(self, event_id: str) -> dict[str, Any] | None:
        """A kept event's body ({"event", "record", "derived"}), or None (unknown or pruned)."""
        rows = self.query("SELECT body FROM crmbridge_events WHERE event_id = ?", (event_id,))
        return self.js(rows[0][0]) if rows else None

    def prune(self, now: datetime | None = None) -> tuple[int, int]:
        """Remove events and decisions older than the retention: (events, decisions) removed. On a
        connection of its own, in chunks of PRUNE_CHUNK rows, each its own transaction, so that
        jobs writing meanwhile never wait for a long delete."""
        cutoff = self.ts((now or datetime.now(UTC)) - timedelta(seconds=self.retention))
        conn = self._connect()
        try:
            return (self._delete(conn, "crmbridge_events", "event_id", cutoff),
                    self._delete(conn, "crmbridge_decisions", "id", cutoff))
        finally:
            conn.close()

    def _delete(self, conn: Any, table: str, key: str, cutoff: Any) -> int:
        removed = 0
        while True:
            count = self._query_count(conn, f"DELETE FROM {table} WHERE {key} IN "
                                            f"(SELECT {key} FROM {table} WHERE at < ? LIMIT {PRUNE_CHUNK})", (cutoff,))
            removed += count
            if count < PRUNE_CHUNK:
                return removed

    def maybe_prune(self, store: Any, key: str) -> threading.Thread | None:
        """About once an hour, one worker of all (a Redis lock) prunes, in a thread of its own
        (returned; None when this worker does not prune now)."""
        if time.monotonic() < self._next_prune:
            return None
        self._next_prune = time.monotonic() + 600
        try:
            if not store.set(key, str(time.time()), nx=True, ex=PRUNE_EVERY):
                return None
        except Exception:
            return None

        def run() -> None:
            try:
                events, decisions = self.prune()
                log.info("decision history pruned: %d event(s), %d decision(s) older than %d s",
                         events, decisions, self.retention)
            except Exception:
                log.warning("decision history prune failed", exc_info=True)
        thread = threading.Thread(target=run, name="crmbridge-history-prune", daemon=True)
        thread.start()
        return thread

    # --- facts (the `record` action; reports/) ---------------------------------------------------

    def add_fact(self, row: tuple) -> bool:
        """Store one fact (fact_row's tuple) unless its key is stored already: True when stored now,
        False when it was there (a repeated event, a re-run job). A database that fails raises
        (the step is retried: a fact is never dropped); its connection is opened again next time."""
        values = (row[0], self.ts(row[1]), *row[2:])
        sql = (f"INSERT INTO crmbridge_facts ({FACT_COLUMNS}) VALUES ({', '.join(['?'] * len(values))}) "
               "ON CONFLICT (fact_id) DO NOTHING")
        with self._lock:
            try:
                return self._query_count(self._open(), sql, values) == 1
            except Exception:
                self._reset()
                raise

    def fact_totals(self, metric: str, aggregate: str, by: list[str], first: str, last: str,
                    where: dict[str, str] | None = None) -> list[tuple]:
        """A metric's facts from day `first` to day `last` (YYYY-MM-DD, both included, in each fact's
        calendar zone), only those whose dimensions have the values `where` names, aggregated
        (AGGREGATES, or a percentile `pNN`) per group of `by`: a period (PERIODS) or a dimension (a
        fact without it is in the group ""). Rows (*group, value), in group order."""
        keys, params = self._group_keys(by)
        filters, filtered = self._filters(where or {})
        share = percentile(aggregate)
        if share is not None:
            return self._percentiles(keys, params, share, metric, first, last, filters, filtered)
        positions = ", ".join(str(i + 1) for i in range(len(keys)))
        sql = (f"SELECT {', '.join([*keys, AGGREGATES[aggregate]])} FROM crmbridge_facts "
               f"WHERE metric = ? AND day >= ? AND day <= ?{filters}"
               + (f" GROUP BY {positions} ORDER BY {positions}" if keys else ""))
        rows = self.query(sql, (*params, metric, first, last, *filtered))
        return [(*("" if v is None else str(v) for v in row[:-1]), row[-1]) for row in rows
                if keys or row[-1] is not None]

    def _group_keys(self, by: list[str]) -> tuple[list[str], list[str]]:
        keys, params = [], []
        for name in by:
            if name in PERIODS:
                keys.append(PERIODS[name])
            else:
                keys.append(self.dimension_sql)
                params.append(self.dimension_param(name))
        return keys, params

    def _filters(self, where: dict[str, str]) -> tuple[str, list[str]]:
        """` AND <dimension> = ?` per `where` entry, and its parameters (name, then value)."""
        sql, params = "", []
        for name, value in sorted(where.items()):
            sql += f" AND {self.dimension_sql} = ?"
            params += [self.dimension_param(name), str(value)]
        return sql, params

    def _percentiles(self, keys: list[str], params: list[str], share: float, metric: str, first: str,
                     last: str, filters: str = "", filtered: tuple | list = ()) -> list[tuple]:
        """The percentile per group over the group's own values (the base: SQLite has no
        percentile_cont, so the values are read in order and interpolated as PostgreSQL does)."""
        rows = self.query(f"SELECT {', '.join([*keys, 'value'])} FROM crmbridge_facts "
                          f"WHERE metric = ? AND day >= ? AND day <= ? AND value IS NOT NULL{filters}",
                          (*params, metric, first, last, *filtered))
        groups: dict[tuple, list[float]] = {}
        for *group, value in rows:
            groups.setdefault(tuple("" if v is None else str(v) for v in group), []).append(float(value))
        return [(*group, percentile_cont(values, share)) for group, values in sorted(groups.items())]

    def stats(self) -> dict[str, int]:
        """Rows kept, and bytes on disk where the database says (PostgreSQL: tables and indexes)."""
        events = self.query("SELECT count(*) FROM crmbridge_events")[0][0]
        decisions = self.query("SELECT count(*) FROM crmbridge_decisions")[0][0]
        return {"events": events, "decisions": decisions, "bytes": self.size()}

    @staticmethod
    def js(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


def percentile(aggregate: str) -> float | None:
    """`p90` → 0.9 (a percentile aggregate); None for any other aggregate name."""
    m = PERCENTILE.fullmatch(str(aggregate))
    share = float(m[1]) / 100 if m else None
    return share if share is not None and 0 < share < 1 else None


def percentile_cont(values: list[float], share: float) -> float:
    """PostgreSQL's percentile_cont: the value at `share` of the sorted values, interpolated
    linearly between the two nearest (p50 of 10, 20, 30, 40 is 25)."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class SQLiteHistory(History):
    """A file beside the configuration (WAL, synchronous=NORMAL: a power cut may lose the last
    transactions, never corrupt the file); several processes may write it."""
    name = "sqlite"
    dimension_sql = "json_extract(dimensions, ?)"

    @staticmethod
    def dimension_param(name: str) -> str:
        return '$."' + name.replace('"', '') + '"'

    def __init__(self, path: Path, retention: int) -> None:
        super().__init__(retention)
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the busy timeout as long as a migration's (pipeline/migrate.py): a new database's first
        # opener migrates it, and on a busy machine that (Alembic imported and run) can outlast 5 s
        # while the other openers wait here to switch it to WAL ("database is locked" at 5 s)
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        for attempt in range(10):
            try:   # openers switching a new file to WAL at once: SQLite answers one of them "locked"
                conn.execute("PRAGMA journal_mode=WAL")   # at once, without waiting, to avoid a deadlock
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        migrate.ensure(conn, f"sqlite:///{self.path}")
        return conn

    def _write(self, conn: sqlite3.Connection, events: list[tuple], decisions: list[tuple]) -> None:
        conn.execute("BEGIN")
        try:
            conn.executemany(f"INSERT INTO crmbridge_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                             "ON CONFLICT (event_id) DO NOTHING",
                             [(r[0], self.ts(r[1]), *r[2:]) for r in events])
            conn.executemany(f"INSERT INTO crmbridge_decisions ({DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(self.ts(r[0]), *r[1:]) for r in decisions])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _query(self, conn: sqlite3.Connection, sql: str, params: tuple) -> list[tuple]:
        return conn.execute(sql, params).fetchall()

    @staticmethod
    def _query_count(conn: sqlite3.Connection, sql: str, params: tuple) -> int:
        return conn.execute(sql, params).rowcount   # autocommit: one statement, one transaction

    def size(self) -> int:
        """Bytes of the pages in use (the file once its write-ahead log is checkpointed, free pages not counted)."""
        pages = self.query("SELECT (SELECT page_count FROM pragma_page_count()) - "
                           "(SELECT freelist_count FROM pragma_freelist_count())")[0][0]
        return pages * self.query("SELECT page_size FROM pragma_page_size()")[0][0]

    @staticmethod
    def ts(moment: datetime) -> str:
        """Stored as ISO 8601 text in UTC, one width, so that text order is time order."""
        return moment.astimezone(UTC).isoformat(timespec="microseconds")

    @staticmethod
    def dt(value: str) -> datetime:
        return datetime.fromisoformat(value)


class PostgresHistory(History):
    """PostgreSQL at DATABASE_URL (psycopg 3): timestamptz and jsonb columns, so that an operator
    may also ask it directly (`detail->>'reason'`)."""
    name = "postgresql"
    dimension_sql = "dimensions ->> ?"

    @staticmethod
    def dimension_param(name: str) -> str:
        return name

    def _percentiles(self, keys: list[str], params: list[str], share: float, metric: str, first: str,
                     last: str, filters: str = "", filtered: tuple | list = ()) -> list[tuple]:
        """PostgreSQL's own percentile_cont per group."""
        positions = ", ".join(str(i + 1) for i in range(len(keys)))
        sql = (f"SELECT {', '.join([*keys, f'percentile_cont({share!r}) WITHIN GROUP (ORDER BY value)'])} "
               f"FROM crmbridge_facts WHERE metric = ? AND day >= ? AND day <= ? AND value IS NOT NULL{filters}"
               + (f" GROUP BY {positions} ORDER BY {positions}" if keys else ""))
        rows = self.query(sql, (*params, metric, first, last, *filtered))
        return [(*("" if v is None else str(v) for v in row[:-1]), row[-1]) for row in rows
                if row[-1] is not None]

    def __init__(self, url: str, retention: int) -> None:
        super().__init__(retention)
        self.url = url

    def _connect(self) -> Any:
        import psycopg
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=3,
                               options=f"-c synchronous_commit={'on' if self.durable else 'off'} -c statement_timeout=5000")
        try:
            migrate.ensure(conn, migrate.sqlalchemy_url(self.url))   # two workers starting together: one migrates
        except BaseException:
            conn.close()
            raise
        return conn

    def _write(self, conn: Any, events: list[tuple], decisions: list[tuple]) -> None:
        """One statement (one round trip, one transaction): the events, then the decisions."""
        parts, params = [], []
        if events:
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(events))
            parts.append(f"ev AS (INSERT INTO crmbridge_events ({EVENT_COLUMNS}) VALUES {values} "
                         "ON CONFLICT (event_id) DO NOTHING)")
            params += [v for row in events for v in row]
        values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(decisions))
        head = f"WITH {', '.join(parts)} " if parts else ""
        if decisions:
            sql = f"{head}INSERT INTO crmbridge_decisions ({DECISION_COLUMNS}) VALUES {values}"
            params += [v for row in decisions for v in row]
        else:
            sql = f"{head}SELECT 1"
        conn.execute(sql, params)

    def _query(self, conn: Any, sql: str, params: tuple) -> list[tuple]:
        return conn.execute(sql.replace("?", "%s"), params).fetchall()

    @staticmethod
    def _query_count(conn: Any, sql: str, params: tuple) -> int:
        return conn.execute(sql.replace("?", "%s"), params).rowcount   # autocommit: one statement, one transaction

    def size(self) -> int:
        return self.query("SELECT pg_total_relation_size('crmbridge_events') "
                          "+ pg_total_relation_size('crmbridge_decisions')")[0][0]

    @staticmethod
    def ts(moment: datetime) -> datetime:
        return moment

    @staticmethod
    def dt(value: datetime) -> datetime:
        return value


def open_history(settings: Any) -> History | None:
    """The store the settings name (nothing is opened yet), or None when CRMBRIDGE_HISTORY=off."""
    if not settings.history:
        return None
    if settings.database_url:
        return PostgresHistory(settings.database_url, settings.history_retention)
    return SQLiteHistory(settings.history_file, settings.history_retention)


def open_facts(settings: Any) -> History:
    """The store of the `record` action's facts: the decision history's database, whether or not the
    history itself is kept (CRMBRIDGE_HISTORY=off leaves the facts on). An object of its own (its own
    connection and lock), so a fact is never queued behind the history's writer thread; its commits
    are durable (PostgreSQL synchronous_commit on, SQLite synchronous FULL): the step is recorded
    done after the fact is on disk, so a database crash cannot take back a fact the job counted."""
    store: History = (PostgresHistory(settings.database_url, settings.history_retention) if settings.database_url
                      else SQLiteHistory(settings.history_file, settings.history_retention))
    store.durable = True
    return store
