"""The process's logging: text lines by default, or one JSON object per line with
CRMBRIDGE_LOG_FORMAT=json (structlog's ProcessorFormatter over the standard library's loggers).

In JSON, every line written while a job handles an event carries that event's `event_id`,
`connection`, `record` and `kind` (bound in structlog's context variables where the job starts:
`event_context`), and `rule` while a rule's steps run (`rule_context`); an audit line's own fields
(`what`, `rule`, `action`, `result`, …) are fields of its object. Values of keys naming a token,
secret, password or signature, bot tokens and `token=…`-like values never reach a line.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, clear_contextvars, get_contextvars

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
SECRET_KEY = re.compile(r"token|secret|passw|signature|api_?key|authori[sz]ation|cookie|credential", re.I)
BOT_TOKEN = re.compile(r"bot\d+:[A-Za-z0-9_-]{6,}")
SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey")   # SECRET_VALUE's, for a quick look first
SECRET_VALUE = re.compile(r"(?i)((?:access_?token|refresh_?token|token|secret|password|api_?key)"
                          r"[\"']?\s*[:=]\s*[\"']?)[^\"'&,\s}]+")


def configure(fmt: str | None = None, level: str | None = None, stream: TextIO | None = None) -> None:
    """Set up the root logger for this process (CRMBRIDGE_LOG_FORMAT, CRMBRIDGE_LOG_LEVEL)."""
    fmt = (fmt or os.environ.get("CRMBRIDGE_LOG_FORMAT") or "text").lower()
    if fmt not in FORMATS:
        raise SystemExit(f"CRMBRIDGE_LOG_FORMAT: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    level = (level or os.environ.get("CRMBRIDGE_LOG_LEVEL") or "INFO").upper()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(Hiding(json_formatter()) if fmt == "json" else Hiding(logging.Formatter(TEXT_FORMAT), text=True))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


_hidden: set[str] = set()   # the configured connections' secret values (hide_secrets)


def hide_secrets(connections: Any) -> None:
    """Never write these connections' credentials and webhook secrets, whatever line they reach (a
    library's debug line with a URL, an error echoing a request): called when the runtime loads them."""
    for conn in connections:
        for value in [*(conn.credentials or {}).values(), conn.webhook_secret]:
            if isinstance(value, str) and len(value) >= 4:
                _hidden.add(value)


class Hiding(logging.Formatter):
    """Another formatter's line, with every hidden value and bot token taken out, and in a text line
    `token=…`-like values too (a JSON line's values were cleaned field by field: _without_secrets)."""

    def __init__(self, inner: logging.Formatter, *, text: bool = False):
        super().__init__()
        self.inner, self.text = inner, text

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for value in _hidden:
            if value in line:
                line = line.replace(value, "(secret)")
        if "bot" in line:
            line = BOT_TOKEN.sub("bot(token)", line)
        if self.text and any(word in line.lower() for word in SECRET_WORDS):
            line = SECRET_VALUE.sub(r"\1(secret)", line)
        return line


def configure_once() -> None:
    """Set up logging unless this process already did (gunicorn loads the app without main())."""
    if not logging.getLogger().handlers:
        configure()


def json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ExtraAdder(allow=("audit",)),
            _audit_fields,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            _without_secrets,
            structlog.processors.JSONRenderer(ensure_ascii=False, default=str),
        ],
    )


def _audit_fields(logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """An audit line (pipeline/audit.py passes its entry as `extra={"audit": …}`): its fields, with
    the event's named as everywhere else (event_id, record), and `what` as the message."""
    entry = event_dict.pop("audit", None)
    if isinstance(entry, Mapping):
        for key, value in entry.items():
            field = {"event": "event_id", "entity": "record", "at": "audit_at"}.get(key, key)
            event_dict.setdefault(field, value)
        event_dict["event"] = entry.get("what", event_dict.get("event"))
    return event_dict


def _without_secrets(logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {key: _clean(key, value) for key, value in event_dict.items()}


def _clean(key: Any, value: Any) -> Any:
    if SECRET_KEY.search(str(key)) and value not in (None, ""):
        return "(secret, not logged)"
    if isinstance(value, str):
        return SECRET_VALUE.sub(r"\1(secret)", BOT_TOKEN.sub("bot(token)", value))
    if isinstance(value, Mapping):
        return {k: _clean(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(None, v) for v in value]
    return value


# --- the context every line of a job carries -------------------------------------------------------

def event_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a line about this event says of it: a queued event (Event.to_dict) or a timer's job."""
    if "event" in payload and isinstance(payload["event"], Mapping):   # a timer, with its event
        return {**event_fields(payload["event"]), "timer": payload.get("timer_id")}
    if "id" not in payload:   # an RQ timer job carries only the timer's id and time
        return {"timer": payload.get("timer_id")}
    entity = payload.get("entity") or {}
    record = f"{entity.get('type')}:{entity.get('id')}" if entity else None
    bound = (payload.get("data") or {}).get("record") if isinstance(payload.get("data"), Mapping) else None
    if isinstance(bound, Mapping) and bound.get("type") and bound.get("id"):   # a press bound to a record
        record = f"{bound['type']}:{bound['id']}"
    return {"event_id": payload.get("id"), "connection": payload.get("connection"), "record": record,
            "kind": payload.get("kind")}


@contextlib.contextmanager
def event_context(payload: Mapping[str, Any]) -> Iterator[None]:
    """Bind a job's event to every line logged until the job ends."""
    before = get_contextvars()
    bind_contextvars(**{k: v for k, v in event_fields(payload).items() if v is not None})
    try:
        yield
    finally:   # what bind_event added too
        clear_contextvars()
        bind_contextvars(**before)


def bind_event(payload: Mapping[str, Any]) -> None:
    """Add a timer's event to the job's context, once it is known (event_context resets it)."""
    bind_contextvars(**{k: v for k, v in event_fields(payload).items() if v is not None})


def rule_context(rule: str) -> contextlib.AbstractContextManager:
    """Bind a rule's name to the lines logged while its steps run."""
    return bound_contextvars(rule=rule)
