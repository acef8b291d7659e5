"""The loaded service: settings, connections, rules, the store, the queue and the clients.

The web process and each worker build one `Runtime` at start. Building it validates the
whole configuration, so a broken rule file stops the service before it takes any traffic.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

import logging_setup
from config.connections import Connections, load_connections
from config.loader import ConfigError, ConfigErrors
from config.settings import Settings
from connectors import CONNECTORS
from connectors.base import BaseClient
from pipeline.history import open_history
from pipeline.steps import STEPS
from queueing import InProcessBackend, Keys, RQBackend
import redisconn
from ratelimit import Limit, RateLimiter, limiter_for  # noqa: F401 - Limit, RateLimiter: tests reach them here
import reports
from rules import MODULES, find_or_create, make_document, send_digest, send_email
from rules._offline import check as offline_checks
from rules._verb_support import unsupported_options, unsupported_verbs
from rules.engine import RuleSet
from rules.files import load_rules

log = logging.getLogger("crmbridge")

NOT_DURABLE = ("REDIS_URL is not set: crmbridge runs web and worker in one process on an "
               "in-process store. Queued work and pending timers will NOT survive a restart. "
               "Set REDIS_URL for anything but a first look.")


def load_configuration(settings: Settings) -> tuple[Connections, RuleSet]:
    """connections.yaml and rules/*.yaml from the configuration directory, checked together."""
    base = settings.config_dir
    path = base / "connections.yaml"
    if not path.exists():
        raise ConfigErrors([ConfigError(str(path), 0, "no connections.yaml in the configuration "
                                        f"directory {str(base)!r} (set CRMBRIDGE_CONFIG)")])
    errors: list[ConfigError] = []
    connections, loaded = Connections(), False
    try:
        connections, loaded = load_connections(path, settings.environ, shown_as=str(path)), True
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    try:
        # connections.yaml's own errors come first; its calendars are unknown then, and rules
        # naming them are not reported again for that
        ruleset = load_rules(base / "rules", MODULES, calendars=connections.calendars if loaded else None,
                             connections=connections.connections or None, base=None, calendars_file=str(path))
        errors.extend(unsupported_options(ruleset.rules, connections, CONNECTORS, STEPS))
        errors.extend(find_or_create.unsupported(ruleset.rules, connections, CONNECTORS))
        errors.extend(unsupported_verbs(ruleset.rules, connections, MODULES, CONNECTORS, STEPS))
        errors.extend(send_digest.unsupported(ruleset.rules, connections, CONNECTORS))
        errors.extend(send_email.load_templates(ruleset.rules, base))
        found, warnings = make_document.load_templates(ruleset.rules, base, connections, CONNECTORS)   # DOCX templates
        errors.extend(found)
        for warning in warnings:
            log.warning(warning)
        errors.extend(reports.check(base, ruleset.rules))   # reports.yaml against the metrics recorded
        errors.extend(offline_checks(ruleset.rules, connections, CONNECTORS, STEPS))
    except ConfigErrors as exc:
        errors.extend(exc.errors)
        if getattr(exc, "ruleset", None) is not None:   # the rules that loaded: their options too
            errors.extend(offline_checks(exc.ruleset.rules, connections, CONNECTORS, STEPS))
    if errors:
        raise ConfigErrors(errors)
    return connections, ruleset


@dataclass
class Runtime:
    settings: Settings
    connections: Connections
    ruleset: RuleSet
    store: Redis
    keys: Keys
    backend: Any
    clients: dict[str, BaseClient] = field(default_factory=dict)
    recorder: Callable[[str, str, Any], None] | None = None
    history: Any = None              # pipeline/history.py: the decision history (None: switched off)

    @classmethod
    def create(cls, settings: Settings, *, handle_event=None, fire_timer=None, on_failure=None) -> Runtime:
        connections, ruleset = load_configuration(settings)
        logging_setup.hide_secrets(connections.connections.values())   # never in a log line
        for warning in connections.warnings:
            log.warning(warning)
        keys = Keys(settings.redis_prefix)
        if settings.redis_url:
            # REDIS_URL's server, or the primary the Sentinels name, followed across fail-overs
            store = redisconn.connect(settings, health_check_interval=30)
            backend: Any = RQBackend(store, keys, settings.queue_name, job_retries=settings.job_retries)
            if settings.intake_wait_replicas:   # WAIT after intake's write (redisconn.replicated)
                if backend.fast is None:
                    raise ConfigErrors([ConfigError("CRMBRIDGE_INTAKE_WAIT_REPLICAS", 0, "the replica wait "
                                                    "needs the default intake; unset CRMBRIDGE_INTAKE=rq")])
                backend.fast.wait = (settings.intake_wait_replicas, settings.intake_wait_ms)
        else:
            import fakeredis  # the embedded store: Redis semantics, in this process only
            log.warning(NOT_DURABLE)
            store = fakeredis.FakeRedis()
            backend = InProcessBackend(store, keys, handle_event, fire_timer, on_failure)
        rt = cls(settings, connections, ruleset, store, keys, backend)
        rt.history = open_history(settings)   # opened at a job's first write, never by the web process
        return rt

    def client(self, name: str) -> BaseClient:
        """The API client of a connection, made once per process."""
        if name not in self.clients:
            conn = self.connections.connections[name]
            client = CONNECTORS[conn.type].Client(conn, store=self.store, recorder=self.recorder,
                                                  key_prefix=self.keys.prefix)
            client.limiter = self._limiter_for(conn, client)
            self.clients[name] = client
        return self.clients[name]


    def _limiter_for(self, conn, client: BaseClient) -> Callable[..., Any]:
        """The connection's shared limits: the vendor's documented rate, or connections.yaml's
        (`options: {rate_limit: …}`, checked by config/connections.py), with a margin (ratelimit.py)."""
        return limiter_for(self.store, self.keys.prefix, conn, client)


def configure_logging() -> None:
    """Text lines, or JSON objects with CRMBRIDGE_LOG_FORMAT=json (logging_setup.py)."""
    logging_setup.configure()
