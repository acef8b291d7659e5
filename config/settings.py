"""Settings: defaults, then the environment (secrets never live in the repository)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Everything the web and worker processes read at start."""

    config_dir: Path = Path("config")
    redis_url: str | None = None          # None: the embedded, in-process store (not durable)
    redis_prefix: str = "crmbridge:"
    queue_name: str = "crmbridge"
    max_body_bytes: int = MIB
    # two days: longer than any vendor redelivers a webhook (Telegram keeps an update 24 hours)
    dedupe_ttl: int = 2 * 24 * 3600
    # seconds a done step (and a record's stage-move log) is remembered: an event re-run within it
    # (a retry, a deferral, a replay) skips what it did; a replay of an older dead letter asks first
    done_ttl: int = 2 * 24 * 3600
    audit_max: int = 100_000
    snapshot_ttl: int = 90 * 24 * 3600    # seconds a record's snapshot (what derive() compares) is kept
    action_attempts: int | None = None    # at most this many tries per call inside one job (None: the budget decides)
    retry_budget: float = 60.0            # seconds one run of a job may spend retrying its calls (CRMBRIDGE_RETRY_BUDGET)
    job_retries: int = 3                  # RQ re-runs of a whole job after that
    maintenance_interval: int = 10        # RQ's default is 600 s: abandoned jobs are found sooner
    job_heartbeat_ttl: int = 15           # a dead worker's job is abandoned this long after its last heartbeat
    order_gap_timeout: int = 60           # seconds an event waits for its record's missing earlier event
    dead_letter_ttl: int = 30 * 24 * 3600  # seconds a dead letter is kept for a person to decide
    database_url: str | None = None       # PostgreSQL for the decision history; None: SQLite (history_file)
    history: bool = True                  # CRMBRIDGE_HISTORY=off: no decision history (the audit stream stays)
    history_path: Path | None = None      # the SQLite file; None: crmbridge-history.sqlite3 beside config_dir
    history_retention: int = 14 * 24 * 3600  # seconds events (with their bodies) and decisions are kept
    redis_sentinels: tuple[tuple[str, int], ...] = ()  # REDIS_SENTINELS: find the primary through these (redisconn.py)
    redis_sentinel_service: str = "crmbridge"  # the primary's name in the Sentinels' configuration
    redis_sentinel_password: str | None = field(default=None, repr=False)
    intake_wait_replicas: int = 0         # >0: a webhook is answered 200 only once this many replicas have it
    intake_wait_ms: int = 100             # …waiting at most this long (WAIT's timeout), else 503
    testing: bool = False
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"environ": env}
        if env.get("CRMBRIDGE_CONFIG"):
            values["config_dir"] = Path(env["CRMBRIDGE_CONFIG"])
        if env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        if env.get("DATABASE_URL"):
            values["database_url"] = env["DATABASE_URL"]
        if env.get("CRMBRIDGE_HISTORY_PATH"):
            values["history_path"] = Path(env["CRMBRIDGE_HISTORY_PATH"])
        if env.get("CRMBRIDGE_HISTORY"):
            values["history"] = env["CRMBRIDGE_HISTORY"].strip().lower() not in ("off", "0", "false", "no")
        for name, key, cast in (("CRMBRIDGE_REDIS_PREFIX", "redis_prefix", str),
                                ("CRMBRIDGE_QUEUE", "queue_name", str),
                                ("CRMBRIDGE_MAX_BODY_BYTES", "max_body_bytes", int),
                                ("CRMBRIDGE_DEDUPE_TTL", "dedupe_ttl", int),
                                ("CRMBRIDGE_DONE_TTL", "done_ttl", int),
                                ("CRMBRIDGE_MAINTENANCE_INTERVAL", "maintenance_interval", int),
                                ("CRMBRIDGE_JOB_HEARTBEAT_TTL", "job_heartbeat_ttl", int),
                                ("CRMBRIDGE_ORDER_GAP_TIMEOUT", "order_gap_timeout", int),
                                ("CRMBRIDGE_DEAD_LETTER_TTL", "dead_letter_ttl", int),
                                ("CRMBRIDGE_HISTORY_RETENTION", "history_retention", int),
                                ("CRMBRIDGE_SNAPSHOT_TTL", "snapshot_ttl", int),
                                ("CRMBRIDGE_RETRY_BUDGET", "retry_budget", float),
                                ("REDIS_SENTINEL_SERVICE", "redis_sentinel_service", str),
                                ("REDIS_SENTINEL_PASSWORD", "redis_sentinel_password", str),
                                ("CRMBRIDGE_INTAKE_WAIT_REPLICAS", "intake_wait_replicas", int),
                                ("CRMBRIDGE_INTAKE_WAIT_MS", "intake_wait_ms", int)):
            if env.get(name):
                values[key] = cast(env[name])
        if env.get("REDIS_SENTINELS"):   # redisconn.py; REDIS_URL still gives the database and password
            from redisconn import parse_sentinels
            values["redis_sentinels"] = parse_sentinels(env["REDIS_SENTINELS"])
            values.setdefault("redis_url", "redis://localhost/0")
        return replace(cls(**values), **overrides)

    @property
    def history_file(self) -> Path:
        """The decision history's SQLite file (when DATABASE_URL is not set)."""
        return self.history_path or self.config_dir.resolve().parent / "crmbridge-history.sqlite3"
