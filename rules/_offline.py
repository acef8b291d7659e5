"""Start-up checks of what a rule's actions name, that need no CRM. Not a verb: rules/__init__
skips modules whose name starts with "_".

- Moments inside options (`create_task: {due: 2 workign days}`): a duration or a date that cannot
  be read would skip the step on every record while the rule's other steps run.
- Connections an action names (`connection:`, `send_digest`'s `source:` and `to:`): defined in
  connections.yaml, and of a kind that can do it (a digest's source is a CRM that reads overdue tasks;
  a bulk send's channels send messages, and its `crm:` list is read from a CRM that lists recipients).
- Telegram chats named by alias (`chat: team`): defined in that bot's `options: {chats: …}`.
- Templates: the names a template reads exist where the engine builds its context
  (rules.engine.template_context), and `event.…` keys exist on every event.

Values that are templates themselves are checked when rendered (run time, or `validate --online`).
Each error is `file:line:`, what was expected, what was found and the nearest real name.
`connectors` is connectors.CONNECTORS and `steps` pipeline.steps.STEPS, passed in (rules import
no vendor connector nor the pipeline: tests/test_layout.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import time
from typing import Any

from jinja2 import nodes

from config.loader import ConfigError, did_you_mean, line_of
from connectors.base import is_crm_client
from rules._verb_support import can, each_action
from rules.calendar import CalendarError, parse_duration
from rules.engine import DEFAULT_CALENDAR, to_datetime
from rules.templates import ENV, is_template

# verb → its options that are a moment: a duration from now or a date
MOMENTS = {"create_task": ("due",), "start_next_task": ("deadline",)}
# verb → its options naming a Telegram chat (send_digest's is inside `to:`)
CHATS = {"send_message": "chat", "ask_approval": "chat"}
# the names a template sees (rules.engine.template_context), and those some rules add
CONTEXT = ("event", "entity", "data", "now", "rule", "actor", "calendar")
OTHERWISE = ("reason", "missing", "failed")     # an `otherwise:` action: why a condition failed
FOR_EACH = ("item", "loop_index")                # the actions of a rule with `for_each:`
JINJA = ("loop", "self", "super", "caller", "varargs", "kwargs")   # Jinja's own, inside loops and macros
EVENT_KEYS = ("kind", "connection", "source", "entity", "data", "occurred_at", "id")
EVENT_ENTITY_KEYS = ("type", "id")
# event kinds whose data the engine itself makes, so every key is known
DATA_KEYS = {"schedule.tick": ("scheduled_for",)}
CHAT_ID = re.compile(r"-?\d+|@\w{5,}")           # a chat id, or a public @username


def check(rules: list, connections: Any, connectors: dict[str, Any], steps: dict[str, Any]) -> list[ConfigError]:
    """Every problem the checks of this module find, in the rules' order."""
    known = getattr(connections, "connections", None) or {}
    errors: list[ConfigError] = []
    for rule, spec, options in each_action(rules):
        crumb = f'rule "{rule.name}" → {spec.verb}'

        def err(key: Any, message: str, node: Any = options) -> None:
            errors.append(ConfigError(rule.file, line_of(node, key, spec.line), f"{crumb} → {message}"))
        for key in MOMENTS.get(spec.verb, ()):
            problem = moment_problem(options.get(key))
            if problem:
                err(key, f"{key}: {problem}")
        for key, name in _named_connections(spec.verb, options):
            if known and name not in known:   # none known: connections.yaml had errors, said there
                node = options.get("to") if key == "to → connection" else options
                err("connection" if key == "to → connection" else key,
                    f"{key}: no connection {name!r} in connections.yaml{did_you_mean(name, known)}", node)
        chat_key = CHATS.get(spec.verb)
        if chat_key:
            problem = chat_problem(options.get(chat_key), known.get(options.get("connection")))
            if problem:
                err(chat_key, f"{chat_key}: {problem}")
        if spec.verb == "send_digest":
            errors.extend(_digest(rule, spec, options, known, connectors, steps, crumb))
        if spec.verb == "send_bulk" and known:
            for key, node, problem in bulk_problems(options, known, connectors):
                errors.append(ConfigError(rule.file, line_of(node, key, spec.line), f"{crumb} → {problem}"))
        for key, problem in template_problems(options, rule, spec in rule.otherwise):
            err(key, f"{key}: {problem}")
    return errors


def moment_problem(value: Any) -> str | None:
    """What is wrong with a moment option's value ('2 workign days'), or None (templates pass)."""
    if value in (None, "") or is_template(value) or isinstance(value, (int, float)):
        return None
    text = str(value)
    try:
        if re.search(r"[^\W\d_]", text.replace("T", "")):
            parse_duration(text)
        else:
            to_datetime(text, DEFAULT_CALENDAR, time(9, 0))
    except CalendarError as exc:
        return str(exc)
    except ValueError:
        return (f"expected a duration such as '1 working day', a date such as '2026-03-01' or "
                f"'01.03.2026', or a template, found {text!r}")
    return None


def chat_problem(chat: Any, connection: Any) -> str | None:
    """A chat named by alias that the bot's `options: {chats: …}` does not define."""
    if connection is None or connection.type != "telegram" or chat in (None, "") or is_template(chat):
        return None
    text = str(chat).strip()
    aliases = (connection.options or {}).get("chats") or {}
    if CHAT_ID.fullmatch(text) or text in aliases:
        return None
    defined = f"; defined: {', '.join(sorted(map(str, aliases)))}" if aliases else ""
    return (f"expected a chat id, an @username or a chat name from connection {connection.name!r} → "
            f"options → chats, found {text!r}{did_you_mean(text, aliases) or defined}")


# a bulk send's channel: a connection whose client has one of these verbs
BULK_SENDS = ("send_message", "send_sms", "send_email")


def bulk_problems(options: dict, known: dict, connectors: dict) -> Iterator[tuple[str, Any, str]]:
    """send_bulk: each channel a known connection that can send; with `crm:`, the action's
    connection a CRM whose client lists recipients (amoCRM, Bitrix24)."""
    def able(name: str, verbs: tuple[str, ...]) -> bool:
        conn = known.get(name)
        kind = connectors.get(conn.type) if conn is not None else None
        return kind is not None and any(v in getattr(kind.Client, "capabilities", ()) for v in verbs)
    channels = options.get("channels") or []
    for i, channel in enumerate(channels if isinstance(channels, list) else []):
        name = channel.get("connection") if isinstance(channel, dict) else None
        if not isinstance(name, str) or is_template(name):
            continue
        if name not in known:
            yield "connection", channel, (f"channels[{i}] → connection: no connection {name!r} in "
                                          f"connections.yaml{did_you_mean(name, known)}")
        elif not able(name, BULK_SENDS):
            senders = sorted(n for n in known if able(n, BULK_SENDS))
            yield "connection", channel, (f"channels[{i}] → connection: expected a connection that sends messages "
                                          f"({', '.join(senders) or 'none is configured'}), found {name!r} "
                                          f"(a {known[name].type} connection)")
    source = options.get("connection")
    if options.get("crm") is not None and isinstance(source, str) and source in known \
            and not able(source, ("bulk_recipients",)):
        crms = sorted(n for n in known if able(n, ("bulk_recipients",)))
        yield "connection", options, (f"connection: expected, with crm:, the CRM the list is read from "
                                      f"({', '.join(crms) or 'none is configured'}), found {source!r} "
                                      f"(a {known[source].type} connection)")


def _named_connections(verb: str, options: dict) -> Iterator[tuple[str, str]]:
    for key in ("connection", "source"):
        value = options.get(key)
        if isinstance(value, str) and value and not is_template(value) and (key == "connection" or verb == "send_digest"):
            yield key, value
    to = options.get("to")
    if verb == "send_digest" and isinstance(to, dict) and isinstance(to.get("connection"), str):
        yield "to → connection", to["connection"]


def _digest(rule, spec, options: dict, known: dict, connectors: dict, steps: dict, crumb: str) -> list[ConfigError]:
    """send_digest reads overdue tasks from a CRM (`source:`, else the rule's connection) and sends
    to a chat or an address: the source must be a CRM whose client can read them."""
    errors = []
    source = options.get("source") or (rule.trigger.connections[0] if len(rule.trigger.connections) == 1 else None)
    step = steps.get("send_digest")
    conn = known.get(source) if source else None
    if source is None:
        errors.append(ConfigError(rule.file, spec.line, f"{crumb} → source: required, since the rule's "
                                  "'on:' does not name exactly one connection; expected a CRM connection name"))
    elif conn is not None and conn.type in connectors and step is not None:
        client = connectors[conn.type].Client
        if not (is_crm_client(client) and can(client, "send_digest", steps)):
            able = sorted(n for n, c in known.items() if c.type in connectors
                          and is_crm_client(connectors[c.type].Client) and can(connectors[c.type].Client, "send_digest", steps))
            errors.append(ConfigError(rule.file, line_of(options, "source", spec.line),
                                      f"{crumb} → source: expected a CRM connection that can list overdue tasks "
                                      f"({', '.join(able) or 'none is configured'}), found {source!r} "
                                      f"(a {conn.type} connection)"))
    to = options.get("to")
    if isinstance(to, dict):
        problem = chat_problem(to.get("chat"), known.get(to.get("connection")))
        if problem:
            errors.append(ConfigError(rule.file, line_of(to, "chat", spec.line), f"{crumb} → to → chat: {problem}"))
    return errors


def template_problems(options: Any, rule: Any, otherwise: bool) -> Iterator[tuple[str, str]]:
    """(option key, problem) for each template inside the options that reads a name the engine does
    not give it, or an `event.…` key no event has."""
    allowed = set(CONTEXT) | (set(OTHERWISE) if otherwise else set()) | (set(FOR_EACH) if rule.for_each else set())
    data_keys = _data_keys(rule)
    for key, text in _strings(options):
        try:
            tree = ENV.parse(text)
        except Exception:   # a syntax error is the loader's (rules/files.py), said once
            continue
        seen: set[str] = set()
        for problem in _names(tree, allowed, data_keys):
            if problem not in seen:
                seen.add(problem)
                yield key, problem


def _data_keys(rule: Any) -> tuple[str, ...] | None:
    """The keys of `data` when every event the rule listens to is one the engine makes itself."""
    kinds = set(rule.trigger.events)
    if kinds and kinds <= set(DATA_KEYS):
        return tuple(sorted({k for kind in kinds for k in DATA_KEYS[kind]}))
    return None


def _strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if is_template(value):
            yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key} → {k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}[{i}]")


def _names(tree: nodes.Template, allowed: set[str], data_keys: tuple[str, ...] | None) -> Iterator[str]:
    bound = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for name in tree.find_all(nodes.Name):
        if name.ctx != "load" or name.name in bound or name.name in ENV.globals or name.name in allowed \
                or name.name in JINJA:
            continue
        yield (f"the template reads {name.name!r}, which no rule's template has; expected one of "
               f"{', '.join(sorted(allowed))}{did_you_mean(name.name, allowed)}")
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        path = _path(node)
        if not path or path[0] in bound:
            continue
        if path[0] == "event" and len(path) > 1:
            yield from _key(path[1], EVENT_KEYS, "event")
            if path[1] == "entity" and len(path) > 2:
                yield from _key(path[2], EVENT_ENTITY_KEYS, "event.entity")
            if path[1] == "data" and len(path) > 2 and data_keys is not None:
                yield from _key(path[2], data_keys, "event.data")
        if path[0] == "data" and len(path) > 1 and data_keys is not None:
            yield from _key(path[1], data_keys, "data")


def _key(key: str, keys: tuple[str, ...], where: str) -> Iterator[str]:
    if key not in keys:
        yield f"the template reads {where}.{key}: expected one of {', '.join(keys)}{did_you_mean(key, keys)}"


def _path(node: Any) -> list[str] | None:
    """`event.data.chat` or `event['data']` → ['event', 'data', 'chat']; None for anything else."""
    parts: list[str] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            parts.append(node.arg.value)
        else:
            return None
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return [node.name, *reversed(parts)]
