"""connections.yaml: one entry per external account, secrets taken from the environment.

    calendars:
      kyiv-office: {timezone: Europe/Kyiv, country: UA, hours: {mon-fri: "10:00-19:00"}}
    connections:
      agency-amo:
        type: amocrm
        base_url: https://agency.amocrm.ru
        webhook_secret: ${AMO_WEBHOOK_SECRET}   # required: callers are authenticated with it
        credentials:                             # unset variables: record-only mode
          token: ${AMO_TOKEN}
        calendar: kyiv-office
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from config.loader import (
    SECRET_REF,
    ConfigError,
    ConfigErrors,
    expand_env,
    line_of,
    load_yaml,
)
from connectors import CONNECTORS
from connectors.base import Connection, is_crm_client

log = logging.getLogger("crmbridge.config")

KEYS = {"type", "base_url", "webhook_secret", "credentials", "calendar", "options"}


@dataclass
class Connections:
    """The loaded connections.yaml."""

    connections: dict[str, Connection] = field(default_factory=dict)
    calendars: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def load_connections(path: Path, environ: Mapping[str, str], shown_as: str | None = None) -> Connections:
    """Read and check connections.yaml; every problem is collected, then raised at once."""
    shown = shown_as or str(path)
    doc = load_yaml(path, shown)
    errors: list[ConfigError] = []
    result = Connections()
    if not isinstance(doc, dict) or not isinstance(doc.get("connections"), dict):
        raise ConfigErrors([ConfigError(shown, line_of(doc, default=1),
                                        "expected a mapping with a 'connections:' section")])
    for name, cal in (doc.get("calendars") or {}).items():
        if not isinstance(cal, dict):
            errors.append(ConfigError(shown, line_of(doc["calendars"], name),
                                      f"calendar {name!r}: expected a mapping, found {cal!r}"))
        else:
            result.calendars[str(name)] = cal
    for name, entry in doc["connections"].items():
        where = (shown, line_of(doc["connections"], name))
        conn = _connection(str(name), entry, where, environ, errors, result)
        if conn is not None:
            result.connections[conn.name] = conn
    _check_links(doc["connections"], result, errors, shown)
    if errors:
        raise ConfigErrors(errors)
    return result


def _check_links(entries: Any, result: Connections, errors: list[ConfigError], shown: str) -> None:
    """A bot's `options.link.crm` (pipeline/links.py: /link, signed buttons) names a CRM connection of
    this file that can read and write records: checked here, not on the first /link or press."""
    for name, conn in result.connections.items():
        options = (entries.get(name) or {}).get("options") if isinstance(entries.get(name), dict) else None
        if conn.type != "telegram" or not isinstance(options, dict) or "link" not in options:
            continue
        link, crms = options["link"], sorted(
            n for n, c in result.connections.items()
            if is_crm_client(getattr(CONNECTORS.get(c.type), "Client", None)))
        expected = f"expected the name of a CRM connection of this file ({', '.join(crms) or 'none defined'})"
        if not isinstance(link, dict):
            errors.append(ConfigError(shown, line_of(options, "link"), f'connection "{name}" → options → link: '
                                      f"expected a mapping such as {{crm: <connection>, field: …}}, found {link!r}"))
        elif link.get("crm") not in crms:
            errors.append(ConfigError(shown, line_of(link, "crm", line_of(options, "link")),
                                      f'connection "{name}" → options → link → crm: {expected}, '
                                      f"found {link.get('crm')!r}"))


def _connection(name: str, entry: Any, where: tuple[str, int], environ: Mapping[str, str],
                errors: list[ConfigError], result: Connections) -> Connection | None:
    path, line = where

    def err(key: str | None, message: str, node: Any = None) -> None:
        """A problem with `entry[key]`, or with `node[key]` inside it (a line of its own)."""
        where = line_of(entry, key, line) if key else line
        if node is not None:
            where = line_of(node, key, line_of(entry, "options", line))
        errors.append(ConfigError(path, where, f'connection "{name}" → {message}'))

    if not isinstance(entry, dict):
        err(None, f"expected a mapping with type, webhook_secret…, found {entry!r}")
        return None
    for key in entry:
        if key not in KEYS:
            err(key, f"unknown key {key!r}; expected one of: {', '.join(sorted(KEYS))}")
    ctype = entry.get("type")
    if ctype not in CONNECTORS:
        err("type", f"type: expected one of {', '.join(sorted(CONNECTORS))}, found {ctype!r}")
    # outbound-only connectors (email, webhook) take no webhooks, so need no secret to check callers
    outbound = ctype in CONNECTORS and getattr(CONNECTORS[ctype], "OUTBOUND_ONLY", False)
    secret = _secret(entry.get("webhook_secret"), "webhook_secret", environ, err, required=not outbound)
    credentials = {}
    creds = entry.get("credentials") or {}
    if not isinstance(creds, dict):
        err("credentials", f"credentials: expected a mapping of ${{ENV}} references, found {creds!r}")
        creds = {}
    for key, value in creds.items():
        credentials[str(key)] = _secret(value, f"credentials → {key}", environ, err, required=False) or ""
    base_url = entry.get("base_url")
    if isinstance(base_url, str):
        base_url, unset = expand_env(base_url, dict(environ))
        base_url = base_url or None
        if unset and ctype == "webhook":   # its only address: the deployment's, never left out
            err("base_url", f"base_url: environment variable {unset[0]} is not set")
    if base_url is not None and not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
        err("base_url", f"base_url: expected an http(s) URL, found {base_url!r}")
    calendar = entry.get("calendar")
    if calendar is not None and calendar not in result.calendars:
        err("calendar", f"calendar: no calendar {calendar!r} in 'calendars:'")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        err("options", f"options: expected a mapping, found {options!r}")
        options = {}
    raw_options = options
    _unset_in_options(options, environ, err)
    options = _expand_options(options, environ)
    _check_rate(name, ctype, options, err, result)
    _check_rate_limit(name, ctype, options, raw_options, err, result)
    _check_leads_limit(options, raw_options, err)
    _check_zone(name, ctype, options, err, result)
    for key, problem in getattr(CONNECTORS.get(ctype), "option_problems", lambda _: [])(options):
        err(key, f"options → {key}: {problem}", raw_options)   # a connector's own options (connectors/intake/)
    conn = Connection(name=name, type=str(ctype), base_url=base_url, credentials=credentials,
                      webhook_secret=secret, calendar=calendar, options=options)
    if ctype in CONNECTORS and not conn.record_only and base_url is None and getattr(
            CONNECTORS[ctype], "BASE_URL_REQUIRED", False):
        err("base_url", "base_url: required when credentials are set (the account's own address)")
    if ctype in CONNECTORS and conn.record_only and not getattr(CONNECTORS[ctype], "INBOUND_ONLY", False) \
            and getattr(CONNECTORS[ctype], "RECORD_ONLY_WITHOUT_CREDENTIALS", True):
        result.warnings.append(f'connection "{name}" has no credentials: record-only mode, '
                               "calls are logged, not made")
    return conn


def _check_rate(name: str, ctype: Any, options: dict, err, result: Connections) -> None:
    """`options: {rate_per_second, burst}` (often `${AMO_RATE_PER_SECOND:-7}`, so text): a positive
    number, turned into one here. Above the vendor's documented limit it is a warning, not an error:
    a deployment may have a raised quota, and tests point connections at fakes that answer at once."""
    for key in ("rate_per_second", "burst"):
        if key not in options:
            continue
        value = options[key]
        try:
            number = float(value)
            if isinstance(value, bool) or not number > 0 or number == float("inf"):
                raise ValueError
        except (TypeError, ValueError):
            err("options", f"options → {key}: expected a positive number of requests per second, found {value!r}")
            return
        options[key] = number
    documented = getattr(getattr(CONNECTORS.get(ctype), "Client", None), "rate_per_second", None) \
        if ctype in CONNECTORS else None
    rate = options.get("rate_per_second")
    if documented and rate and rate > float(documented):
        result.warnings.append(f'connection "{name}" → options → rate_per_second: {rate:g} is above '
                               f"the {ctype} limit of {float(documented):g} requests per second; "
                               "the API will answer 429 and calls will wait and retry")


# options.rate_limit (ratelimit.configured reads it): the connection's own limit, its margin, and
# Telegram's per-chat and per-group limits. A limit is `per_second` or `per_minute` calls (on
# average), and `burst` calls in any one window (default: a second's or a minute's worth).
RATE_LIMIT_KEYS = ("per_second", "per_minute", "burst", "margin", "per_chat", "per_group")
SCOPED_LIMITS = {"per_chat": (1.0, "1 message per second"), "per_group": (20 / 60, "20 messages per minute")}


def _check_rate_limit(name: str, ctype: Any, options: dict, raw: Any, err, result: Connections) -> None:
    """`options: {rate_limit: {per_second: 6, margin: 0.1}}` (Telegram also `per_chat: {per_second: 1}`,
    `per_group: {per_minute: 20}`): known keys, positive numbers (text from the environment becomes a
    number here), a margin from 0 to 1. Above the vendor's published limit it warns, as
    rate_per_second does."""
    if "rate_limit" not in options:
        return
    spec, node = options["rate_limit"], raw.get("rate_limit") if isinstance(raw, dict) else None
    where = "options → rate_limit"
    if not isinstance(spec, dict):
        err("rate_limit", f"{where}: expected a mapping such as {{per_second: 6, margin: 0.1}}, found {spec!r}", raw)
        return
    for key in spec:
        if key not in RATE_LIMIT_KEYS or (key in SCOPED_LIMITS and ctype != "telegram"):
            allowed = [k for k in RATE_LIMIT_KEYS if k not in SCOPED_LIMITS or ctype == "telegram"]
            err(key, f"{where}: unknown key {key!r}; expected one of: {', '.join(allowed)}", node)
            return
    if not _limit_numbers(spec, node, where, err):
        return
    if "margin" in spec:
        margin = _number(spec["margin"])
        if margin is None or not 0 <= margin <= 1:
            err("margin", f"{where} → margin: expected a share of the window from 0 to 1 (0.1 is 10 %), "
                          f"found {spec['margin']!r}", node)
            return
        spec["margin"] = margin
    for key in SCOPED_LIMITS:
        if key in spec:
            scoped, inner = spec[key], node.get(key) if isinstance(node, dict) else None
            if not isinstance(scoped, dict) or not scoped or set(scoped) - {"per_second", "per_minute", "burst"}:
                err(key, f"{where} → {key}: expected a mapping such as {{per_second: 1}} or {{per_minute: 20}}, "
                         f"found {scoped!r}", node)
                return
            if not _limit_numbers(scoped, inner, f"{where} → {key}", err):
                return
    documented = getattr(getattr(CONNECTORS.get(ctype), "Client", None), "rate_per_second", None) \
        if ctype in CONNECTORS else None
    rate = _rate_of(spec)
    if documented and rate and rate > float(documented):
        result.warnings.append(f'connection "{name}" → {where}: {rate:g} per second is above the {ctype} '
                               f"limit of {float(documented):g} requests per second; the API will answer 429")
    for key, (limit, said) in SCOPED_LIMITS.items():
        rate = _rate_of(spec.get(key) or {})
        if rate and rate > limit + 1e-9:
            result.warnings.append(f'connection "{name}" → {where} → {key}: above Telegram\'s {said}; '
                                   "the API will answer 429")


def _check_leads_limit(options: dict, raw: Any, err) -> None:
    """`options: {leads_limit: {per_minute: 10, burst: 10}}` (pipeline/lead_rate.py): how many of the
    connection's events the worker takes on in a time; per_second or per_minute, and burst."""
    if "leads_limit" not in options:
        return
    spec, node = options["leads_limit"], raw.get("leads_limit") if isinstance(raw, dict) else None
    where = "options → leads_limit"
    if not isinstance(spec, dict) or not ({"per_second", "per_minute"} & set(spec)) or \
            set(spec) - {"per_second", "per_minute", "burst"}:
        err("leads_limit", f"{where}: expected a mapping such as {{per_minute: 10, burst: 10}} "
                           f"(per_second or per_minute, and burst), found {spec!r}", raw)
        return
    _limit_numbers(spec, node, where, err)


def _limit_numbers(spec: dict, node: Any, where: str, err) -> bool:
    """per_second / per_minute (not both) and burst: positive numbers, made numbers in place."""
    if "per_second" in spec and "per_minute" in spec:
        err("per_minute", f"{where}: give per_second or per_minute, not both", node)
        return False
    for key in ("per_second", "per_minute", "burst"):
        if key in spec:
            number = _number(spec[key])
            if number is None or not number > 0:
                err(key, f"{where} → {key}: expected a positive number of calls, found {spec[key]!r}", node)
                return False
            spec[key] = number
    return True


def _number(value: Any) -> float | None:
    """A finite number, or text that is one (options often come from `${ENV:-default}`)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if isinstance(value, bool) or number != number or number in (float("inf"), float("-inf")) else number


def _rate_of(spec: dict) -> float | None:
    if "per_second" in spec:
        return float(spec["per_second"])
    if "per_minute" in spec:
        return float(spec["per_minute"]) / 60
    return None


def _check_zone(name: str, ctype: Any, options: dict, err, result: Connections) -> None:
    """`options: {timezone}` (the account's zone: Planfix dates and its catch-up's filter are read in
    the token user's zone) must be an IANA zone; a Planfix catch-up without it assumes UTC: a warning."""
    zone = options.get("timezone")
    if zone is not None:
        try:
            ZoneInfo(str(zone))
        except (ZoneInfoNotFoundError, ValueError):
            err("options", f"options → timezone: expected an IANA time zone such as Europe/Kyiv, found {zone!r}")
    elif ctype == "planfix" and options.get("catch_up"):
        result.warnings.append(f'connection "{name}" → options: catch_up without timezone: Planfix reads the '
                               "catch-up's time in the zone of the token's user, UTC is assumed; set "
                               "options → timezone (a zone east of the real one misses changes)")


def _secret(value: Any, key: str, environ: Mapping[str, str], err, *, required: bool) -> str | None:
    if value is None:
        if required:
            err(key.split(" ")[0], f"{key}: required; expected an environment reference such as ${{MY_SECRET}}")
        return None
    if not isinstance(value, str) or not SECRET_REF.fullmatch(value.strip()):
        err(key.split(" ")[0], f"{key}: secrets come from the environment; expected ${{ENV_VAR}}, "
                               f"found a literal value")
        return None
    expanded, missing = expand_env(value.strip(), dict(environ))
    if missing and required:
        err(key.split(" ")[0], f"{key}: environment variable {missing[0]} is not set")
        return None
    return expanded or None


def _expand_options(value: Any, environ: Mapping[str, str]) -> Any:
    """Options may name deployment values from the environment: `${TEAM_CHAT_ID:-0}`."""
    if isinstance(value, str):
        return expand_env(value, dict(environ))[0]
    if isinstance(value, dict):
        return {k: _expand_options(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_options(v, environ) for v in value]
    return value


def _unset_in_options(node: Any, environ: Mapping[str, str], err, path: tuple[str, ...] = ("options",)) -> None:
    """An option naming an environment variable without a default (`${STAFF_CHAT_ID}`: a chat id, an
    extension, an address only the deployment knows) needs it set: reported at start-up with its line,
    never run with an empty value. `${NAME:-}` says "may be empty"."""
    for key, value in (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()):
        where = (*path, str(key))
        if isinstance(value, str):
            missing = expand_env(value, dict(environ))[1]
            if missing:
                message = f"{' → '.join(where)}: environment variable {missing[0]} is not set"
                if isinstance(node, dict):
                    err(key, message, node)   # the line of the option itself
                else:
                    err("options", message)
        else:
            _unset_in_options(value, environ, err, where)
