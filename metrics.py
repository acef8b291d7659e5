"""Prometheus metrics: what the door, the worker and the clients count, and `/metrics`.

Each process counts in its own memory, or, with PROMETHEUS_MULTIPROC_DIR set (gunicorn's workers and
every `worker.py`), in files of that directory that `/metrics` adds up (prometheus-client's
multiprocess mode: the directory must be empty when the deployment starts, and shared by the web
processes and the workers of one host). Queue depth, the oldest job's age, pending timers and dead
letters are read from Redis when `/metrics` is scraped (a few commands, whatever the queue holds).

The code counts with one call of a function below at the place the thing happens; a function costs a
few microseconds and never raises (a metric never fails a webhook or a job). docs/operations.md lists
the metrics, a scrape configuration and alert rules.

Each vendor call is also kept, with its answer's first characters, for the action that made it
(`calls_begin` / `take_calls`, used by pipeline/audit.py): the decision history shows them.
"""
from __future__ import annotations

import functools
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from flask import Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger("crmbridge.metrics")

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"))
LATENCY = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENESS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0)
ANSWER_CHARS = 300        # characters of a vendor's answer kept with a call in the decision history
CALLS_PER_ACTION = 20     # calls kept per action (a long paging read keeps its last ones)

WEBHOOKS = Counter("crmbridge_webhooks_total", "Webhooks answered, by connection and HTTP status",
                   ["connection", "status"])
EVENTS = Counter("crmbridge_events_total", "Events (and derived changes) the worker planned, by kind", ["kind"])
RULES = Counter("crmbridge_rule_outcomes_total", "Rules considered, by rule and outcome "
                "(matched, skipped, error)", ["rule", "outcome"])
ACTIONS = Counter("crmbridge_actions_total", "Action steps, by verb and outcome (done, failed, skipped, "
                  "reconciled, repeated, uncertain, unsettled)", ["verb", "outcome"])
VENDOR_CALLS = Counter("crmbridge_vendor_calls_total", "HTTP calls to vendors, by connection and status "
                       "(the HTTP status, or 'error' when no answer came)", ["connection", "status"])
VENDOR_SECONDS = Histogram("crmbridge_vendor_call_seconds", "Time to a vendor's answer, by connection",
                           ["connection"], buckets=LATENCY)
RETRIES = Counter("crmbridge_retries_total", "Vendor calls tried again inside a job, by reason "
                  "(429, 5xx, uncertain, no_answer, other)", ["reason"])
UNCERTAIN = Counter("crmbridge_uncertain_steps_total", "Steps that may have been done and were parked "
                    "for a person (action.uncertain)", ["verb"])
DEAD_LETTERS = Counter("crmbridge_dead_letters_total", "Dead letters written, by job", ["job"])
RATE_WAIT = Counter("crmbridge_rate_limit_wait_seconds", "Seconds calls slept waiting for a rate-limit slot, "
                    "by connection", ["connection"])
TIMER_LATENESS = Histogram("crmbridge_timer_lateness_seconds", "How late a timer fired after its due time",
                           buckets=LATENESS)


# --- one call per place where something happens --------------------------------------------------------

_webhook_counts: dict[tuple[str, int], Any] = {}   # (connection, status) → its counter: labels() once


def webhook_answered(response: Any) -> Any:
    """Flask `after_request` of the webhook door: count the answer by connection and status."""
    try:
        path = request.path
        if path.startswith("/hooks/"):
            name = (request.view_args or {}).get("name") or path[7:].split("/", 1)[0]
            if name not in current_app.extensions["crmbridge"].connections.connections:
                name = "(unknown)"   # any text can follow /hooks/: one label for every unknown name
            key = (name, response.status_code)
            counter = _webhook_counts.get(key)
            if counter is None:
                counter = _webhook_counts[key] = WEBHOOKS.labels(name, str(response.status_code))
            counter.inc()
    except Exception:   # a metric never fails a webhook
        log.debug("webhook not counted", exc_info=True)
    return response


def event_planned(kind: str) -> None:
    EVENTS.labels(kind).inc()


def rules_skipped(skipped: Any) -> None:
    """A plan's skipped rules (one per rule that did not act on this event)."""
    for skip in skipped:
        if getattr(skip, "listening", True) is not False:   # not a rule listening to other event kinds
            RULES.labels(str(skip[0]), "skipped").inc()


def decision(what: str, details: dict[str, Any]) -> None:
    """An audited decision (pipeline/audit.py): rule outcomes, action outcomes, uncertain steps."""
    try:
        if what.startswith("action."):
            verb = verb_of(details.get("action"))
            outcome = what[7:]
            ACTIONS.labels(verb, outcome).inc()
            if outcome == "uncertain":
                UNCERTAIN.labels(verb).inc()
        elif what == "rule.matched":
            RULES.labels(str(details.get("rule")), "matched").inc()
        elif what == "rule.error":
            RULES.labels(str(details.get("rule")), "error").inc()
    except Exception:
        log.debug("decision not counted", exc_info=True)


def verb_of(described: Any) -> str:
    """`telegram.send_message(chat=…)` (PlannedAction.describe) → `send_message`."""
    head = str(described or "").split("(", 1)[0]
    return head.rsplit(".", 1)[-1] or "unknown"


def retried(state: Any) -> None:
    """tenacity's `before_sleep` (pipeline/retry.py): a call is about to be tried again."""
    exc = state.outcome.exception() if state.outcome else None
    status = getattr(exc, "status", None)
    if type(exc).__name__ == "UncertainApiError":
        reason = "uncertain"
    elif status == 429:
        reason = "429"
    elif isinstance(status, int) and status >= 500:
        reason = "5xx"
    elif status is None and exc is not None:
        reason = "no_answer"
    else:
        reason = "other"
    RETRIES.labels(reason).inc()


def dead_lettered(job: str) -> None:
    DEAD_LETTERS.labels(job).inc()


def rate_limit_waited(bucket: str, seconds: float) -> None:
    """A call sleeps `seconds` for a rate-limit slot (ratelimit.py): a connection's bucket, or one of
    its scopes ("<connection>:chat:…"), counted under the connection."""
    RATE_WAIT.labels(bucket.split(":", 1)[0]).inc(seconds)


def timer_fired(fire_at: str) -> None:
    """A timer is being fired now: how late after its due time (a timer never fires early)."""
    try:
        due = datetime.fromisoformat(fire_at)
        late = (datetime.now(due.tzinfo or timezone.utc) - due).total_seconds()
        TIMER_LATENESS.observe(max(late, 0.0))
    except (TypeError, ValueError):
        pass


# --- vendor calls: counted, timed, and kept for the action that made them -----------------------------

_calls = threading.local()   # .buffer: the calls of the job this thread runs (None outside a job)


def calls_begin() -> None:
    """A job starts: keep its vendor calls until the audit takes them (take_calls)."""
    _calls.buffer = []


def calls_end() -> None:
    _calls.buffer = None


def take_calls() -> list[dict[str, Any]]:
    """The calls made since the last time (the calls of the action being audited); [] outside a job."""
    buffer = getattr(_calls, "buffer", None)
    if not buffer:
        return []
    _calls.buffer = []
    return buffer


def vendor_hook(connection: Any):
    """A requests `response` hook for a client's session: every answer of that connection counted,
    timed (requests' `elapsed`: the request sent to the answer's headers read) and kept for the
    decision history."""
    name, secrets = connection.name, _secrets(connection)

    def answered(resp: Any, *args: Any, **kwargs: Any) -> None:
        try:
            seconds = resp.elapsed.total_seconds()
            VENDOR_CALLS.labels(name, str(resp.status_code)).inc()
            VENDOR_SECONDS.labels(name).observe(seconds)
            if getattr(_calls, "buffer", None) is not None:   # (a streamed answer is left unread)
                _keep(connection, resp.request.method, resp.request.url, resp.status_code, seconds,
                      (lambda: "") if kwargs.get("stream") else (lambda: _excerpt(resp)), secrets)
        except Exception:
            log.debug("vendor call not counted", exc_info=True)
    return answered


def _excerpt(resp: Any) -> str:
    """The answer's first characters, decoded without requests' charset guessing over the whole body."""
    return resp.content[:ANSWER_CHARS * 4].decode(resp.encoding or "utf-8", errors="replace")


def vendor_failed(connection: Any, method: str, url: str, exc: BaseException) -> None:
    """A call that got no answer (a timeout, a dropped connection)."""
    try:
        VENDOR_CALLS.labels(connection.name, "error").inc()
        if getattr(_calls, "buffer", None) is not None:
            _keep(connection, method, url, None, None, lambda: f"{type(exc).__name__}: {exc}")
    except Exception:
        log.debug("vendor call not counted", exc_info=True)


def _keep(connection: Any, method: str, url: str, status: int | None, seconds: float | None, answer,
          secrets: tuple[str, ...] | None = None) -> None:
    buffer = _calls.buffer
    secrets = _secrets(connection) if secrets is None else secrets
    path = safe_path(connection, url, secrets)
    tries = sum(1 for c in buffer if c["method"] == method and c["path"] == path)
    text = answer()
    call = {"method": method, "path": path, "status": status,
            "ms": round(seconds * 1000, 1) if seconds is not None else None,
            "retry": tries, "answer": scrub(connection, str(text or "")[:ANSWER_CHARS * 2], secrets)[:ANSWER_CHARS]}
    buffer.append(call)
    if len(buffer) > CALLS_PER_ACTION:
        del buffer[0]


BOT_TOKEN = re.compile(r"bot\d+:[A-Za-z0-9_-]+")
LONG_SECRET = re.compile(r"(?i)((?:access_?token|refresh_?token|token|secret|password|api_?key|auth)"
                         r"[\"']?\s*[:=]\s*[\"']?)[^\"'&,\s}]+")


SECRET_WORDS = ("token", "secret", "passw", "api_key", "apikey", "auth")   # LONG_SECRET's, for a quick look first


def safe_path(connection: Any, url: str, secrets: tuple[str, ...] | None = None) -> str:
    """The call's path without its host, query and secrets: the connection's base path (Bitrix24's
    webhook code may be in base_url) and every credential are left out, a bot token shown as <token>."""
    path = urlsplit(url).path
    base = _base_path(connection.base_url)
    if base and path.startswith(base + "/"):
        path = path[len(base):]
    return scrub(connection, path, secrets)


@functools.lru_cache(maxsize=256)
def _base_path(base_url: str | None) -> str:
    return urlsplit(base_url or "").path.rstrip("/")


def scrub(connection: Any, text: str, secrets: tuple[str, ...] | None = None) -> str:
    """Text without the connection's secrets (credential values, its webhook secret; `secrets` when
    the caller has them already), bot tokens and `token=…`-like values."""
    for value in _secrets(connection) if secrets is None else secrets:
        if value in text:
            text = text.replace(value, "<secret>")
    if "bot" in text:
        text = BOT_TOKEN.sub("bot<token>", text)
    low = text.lower()
    return LONG_SECRET.sub(r"\1<secret>", text) if any(word in low for word in SECRET_WORDS) else text


def _secrets(connection: Any) -> tuple[str, ...]:
    found = []
    for value in [*(connection.credentials or {}).values(), getattr(connection, "webhook_secret", None)]:
        if isinstance(value, str) and len(value) >= 4:
            found.append(value)
            if "/" in value.strip("/"):   # a Bitrix24 webhook "1/abc…": its code alone too
                found.append(value.strip("/").rsplit("/", 1)[-1])
    return tuple(found)


# --- read at scrape time from Redis ----------------------------------------------------------------

class QueueCollector(Collector):
    """Queue depth, the oldest queued job's age, pending and overdue timers, dead letters kept: read
    from Redis at each scrape in one pipeline of fixed size (LLEN, LINDEX 0 and the job's
    enqueued_at, ZCARD, ZCOUNT, HLEN), whatever the queue holds."""

    def __init__(self, rt: Any):
        self.rt = rt

    def collect(self) -> Iterator[Any]:
        rt = self.rt
        depth = GaugeMetricFamily("crmbridge_queue_depth", "Jobs waiting in the queue")
        oldest = GaugeMetricFamily("crmbridge_queue_oldest_job_age_seconds",
                                   "Age of the oldest job waiting in the queue (0 when empty)")
        pending = GaugeMetricFamily("crmbridge_timers_pending", "Timers set and not fired yet")
        overdue = GaugeMetricFamily("crmbridge_timers_overdue", "Timers past their due time, not fired yet")
        dead = GaugeMetricFamily("crmbridge_dead_letters", "Dead letters kept (waiting for a replay or discard)")
        up = GaugeMetricFamily("crmbridge_redis_up", "1 when Redis answered this scrape")
        try:
            queue = getattr(rt.backend, "queue", None)
            pipe = rt.store.pipeline(transaction=False)
            if queue is not None:
                pipe.llen(queue.key)
                pipe.lindex(queue.key, 0)
            pipe.zcard(rt.keys("timers"))
            pipe.zcount(rt.keys("timers"), "-inf", time.time())
            pipe.hlen(rt.keys("dead"))
            answers = pipe.execute()
            if queue is not None:
                size, first, *answers = answers
                age = 0.0
                if first:
                    stamp = rt.store.hget(queue.job_class.key_for(first.decode()), "enqueued_at")
                    age = _age(stamp)
            else:   # the embedded default: an in-process queue
                size, age = rt.backend._queue.qsize(), 0.0
            timers, late, letters = answers
            depth.add_metric([], size)
            oldest.add_metric([], age)
            pending.add_metric([], timers)
            overdue.add_metric([], late)
            dead.add_metric([], letters)
            up.add_metric([], 1)
        except Exception as exc:   # Redis away: say so, and scrape the rest
            log.warning("metrics: Redis not read (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        yield from (depth, oldest, pending, overdue, dead, up)


def _age(stamp: Any) -> float:
    if not stamp:
        return 0.0
    text = stamp.decode() if isinstance(stamp, bytes) else str(stamp)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - when).total_seconds())


# --- /metrics ------------------------------------------------------------------------------------

def registry_for(rt: Any) -> CollectorRegistry:
    """This process's metrics, or, in multiprocess mode, every process's added up; with the queue's."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Default())
    registry.register(QueueCollector(rt))
    return registry


class _Default(Collector):
    """The process's own registry (the embedded default, tests), read through another registry."""

    def collect(self) -> Iterator[Any]:
        return REGISTRY.collect()


def install(app: Any, rt: Any) -> None:
    """`GET /metrics` on the web app, and the webhooks' counter. With CRMBRIDGE_METRICS_TOKEN set,
    /metrics asks for `Authorization: Bearer <token>` (compared in constant time)."""
    app.after_request(webhook_answered)
    token = os.environ.get("CRMBRIDGE_METRICS_TOKEN") or ""
    registry = registry_for(rt)

    @app.get("/metrics")
    def metrics_page():
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return Response("metrics need the token (Authorization: Bearer …)\n", 401,
                                {"WWW-Authenticate": "Bearer", "Content-Type": "text/plain; charset=utf-8"})
        return Response(generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST})


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's `child_exit` hook (put `from metrics import child_exit` in gunicorn.conf.py): a dead
    web worker's live gauges leave the multiprocess directory; its counters stay counted."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(worker.pid)
