"""The door: one view, POST /hooks/<connection>, that authenticates, parses, dedupes,
enqueues and answers. Nothing slow happens here; the worker does the rest.

`python webhooks.py` serves it on 127.0.0.1:8000 (PORT, HOST); without REDIS_URL the same
process also runs the worker on an in-process store.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from flask import Flask, jsonify, request
from redis.exceptions import RedisError
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed

import logging_setup
import metrics
import worker
from config.loader import ConfigErrors
from config.settings import Settings
from connectors import CONNECTORS
from connectors.base import Event, RawWebhook, UnsupportedMediaType, WebhookError
from runtime import Runtime, configure_logging
from pipeline import timers
from redisconn import NotReplicated
from reports import web as reports_web
from console import register_console

log = logging.getLogger("crmbridge.web")


def create_app(overrides: dict[str, Any] | None = None, *, settings: Settings | None = None) -> Flask:
    """Load and check the whole configuration, then build the app (ConfigErrors if invalid; under
    gunicorn, the same list as gunicorn's "app failed to load", printed alone, no traceback)."""
    settings = settings or Settings.from_env(**(overrides or {}))
    logging_setup.configure_once()   # under gunicorn: CRMBRIDGE_LOG_FORMAT and _LEVEL for the app's lines
    try:
        rt = worker.open_runtime(settings)
    except ConfigErrors as exc:
        if "gunicorn.arbiter" in sys.modules:   # gunicorn prints an AppImportError's text and stops
            from gunicorn.errors import AppImportError
            raise AppImportError(str(exc)) from None
        raise
    if not rt.backend.durable:  # the embedded default: this process is the worker too
        timers.ensure_schedules(rt)
    app = Flask(__name__)
    # one byte over the limit is read, so that a chunked body (no Content-Length) that is too big
    # is seen as such (Werkzeug raises 413 past MAX_CONTENT_LENGTH) instead of being cut at the limit
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes + 1, TESTING=settings.testing)
    app.extensions["crmbridge"] = rt
    app.register_blueprint(reports_web.blueprint)   # GET /reports/<name>
    metrics.install(app, rt)   # GET /metrics, and every webhook's answer counted (docs/operations.md)

    limit = settings.max_body_bytes

    @app.post("/hooks/<name>")
    def receive(name: str):
        """Authenticate, parse, dedupe, queue, answer: nothing slow happens here."""
        conn = rt.connections.connections.get(name)
        if conn is None:
            return _error(404, f"unknown connection {name!r}")
        connector = CONNECTORS[conn.type]
        length = request.content_length   # None when chunked
        if length is not None and length > limit:
            return _error(413, f"body over {limit} bytes")
        body = request.get_data(cache=False)
        if len(body) > limit:
            return _error(413, f"body over {limit} bytes")
        if length is not None and len(body) < length:
            # the client closed early: gunicorn hands the raw stream over (wsgi.input_terminated),
            # so Werkzeug does not see the body end short of its Content-Length
            return _error(400, f"body ended after {len(body)} of its {length} bytes")
        raw = RawWebhook(headers=request.headers, content_type=request.mimetype, body=body,
                         query=request.args.to_dict())
        try:
            connector.verify(raw, conn)
            if raw.content_type not in connector.CONTENT_TYPES:
                raise UnsupportedMediaType(f"content type {raw.content_type or 'missing'!r}; "
                                           f"expected {', '.join(connector.CONTENT_TYPES)}")
            events = connector.parse(raw, conn)
        except WebhookError as exc:
            return _error(exc.status, str(exc))
        try:
            accepted, duplicates = intake(rt, events)
        except NotReplicated as exc:   # queued on the primary alone (CRMBRIDGE_INTAKE_WAIT_REPLICAS): the retry is a duplicate
            log.warning("webhook %s queued, not yet on a replica: %s", name, exc)
            return _error(503, "not yet replicated; retry later")
        except RedisError as exc:
            log.error("webhook %s not stored: %s", name, exc)
            return _error(503, "queue unavailable; retry later")
        return jsonify(accepted=accepted, duplicates=duplicates)

    @app.get("/hooks/<name>")
    def echo(name: str):
        """A vendor's check of the URL before it sends anything (Zadarma: ?zd_echo=<x> → <x>)."""
        conn = rt.connections.connections.get(name)
        answer = getattr(CONNECTORS[conn.type], "echo", None) if conn else None
        if answer is None:  # webhooks are POSTs; only a vendor's URL check comes as a GET
            raise MethodNotAllowed(valid_methods=["POST"])
        text = answer(request.args.to_dict())
        if text is None:
            return _error(400, "expected ?zd_echo=<token>")
        return text, 200, {"Content-Type": "text/plain; charset=utf-8"}

    @app.get("/healthz")
    def healthz():
        try:
            rt.store.ping()
        except RedisError as exc:
            return jsonify(redis="down", error=str(exc)), 503
        return jsonify(redis="ok", durable=rt.backend.durable)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):   # a body over the limit, a broken request, a wrong method
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(InternalServerError)
    def internal_error(exc: InternalServerError):   # a bug: Flask has logged it; say no more here
        return _error(500, "internal error")

    register_console(app, rt)   # /console, only when CRMBRIDGE_CONSOLE_TOKEN is set (docs/console.md)
    return app


def intake(rt: Runtime, events: list[Event]) -> tuple[int, int]:
    """Queue the events not seen before (atomically with their seen-mark); count the rest."""
    accepted = duplicates = 0
    for event in events:
        if rt.backend.accept(event.to_dict(), rt.keys("seen", event.id),
                             event.dedupe_window or rt.settings.dedupe_ttl):
            accepted += 1
        else:
            duplicates += 1
    return accepted, duplicates


def _error(status: int, reason: str):
    return jsonify(error=_reason(reason)), status


def _reason(reason: str) -> str:
    return reason.splitlines()[0][:300] if reason else "error"


def main() -> int:
    """Serve on HOST:PORT; the embedded default when REDIS_URL is not set."""
    configure_logging()
    try:
        app = create_app()
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return 1
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    log.info("crmbridge listening on http://%s:%s/hooks/<connection>", host, port)
    app.run(host=host, port=port, threaded=True, use_reloader=False, load_dotenv=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
