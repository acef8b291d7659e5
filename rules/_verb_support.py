"""Start-up checks of what only some CRMs can do. Not a verb: rules/__init__ skips modules whose
name starts with "_".

- A verb module that sets `CLIENT_METHOD` (the client method its steps call: set_responsible,
  delete_entity, notify) is refused for every connection whose client has no such method;
  `REFUSED` gives, per connector type, why and what to do instead (unsupported_verbs).
- An option only some clients' methods take (`move_to_stage: {only_forward}`, `create_task: {bind}`)
  is refused where the method has no such parameter (unsupported_options).
- find_or_create's own check (its `by:` against a client's FIND_BY) walks the actions the same way.

Each error names the rule file's line. The action's CRM is its `connection:`, else the connections
the rule's `on:` names, else a fallback the check gives (action_targets). `connectors` is
connectors.CONNECTORS, passed in: rules never import a vendor's connector (tests/test_layout.py).
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from config.loader import ConfigError
from connectors.base import is_crm_client

# option → (verb, why it is refused where the verb's client method does not take it)
OPTIONS = {"move_to_stage": ("only_forward", "only amoCRM and Bitrix24 read their stages' order"),
           "create_task": ("bind", "its tasks belong to one record only; Bitrix24 binds a task to several")}


def each_action(rules: list) -> Iterator[tuple[Any, Any, dict[str, Any]]]:
    """(rule, action spec, its options as a mapping) for every action and `otherwise:` action."""
    for rule in rules:
        for spec in (*rule.actions, *rule.otherwise):
            yield rule, spec, spec.options if isinstance(spec.options, dict) else {}


def action_targets(rule: Any, options: dict[str, Any], fallback: Iterable[str] = ()) -> tuple[list[str], bool]:
    """The connections an action acts on, and whether its own `connection:` named it: that one, else
    the connections the rule's `on:` names, else `fallback`."""
    named = options.get("connection")
    if named:
        return [named], True
    return list(rule.trigger.connections) or list(fallback), False


def unsupported_verbs(rules: list, connections: Any, modules: dict[str, Any],
                      connectors: dict[str, Any]) -> list[ConfigError]:
    """Every action of a CLIENT_METHOD verb aimed at a connection that cannot do it. A Telegram or
    form connection in `on:` is skipped: the step then goes to the CRM of the record the event is
    bound to, which only run time knows; `on:` naming none: every CRM connection may be the one."""
    errors: list[ConfigError] = []
    known = getattr(connections, "connections", None) or {}
    crms = [n for n, c in known.items() if is_crm_client(getattr(connectors.get(c.type), "Client", None))]
    for rule, spec, options in each_action(rules):
        module = modules.get(spec.verb)
        method = getattr(module, "CLIENT_METHOD", None)
        if method is None:
            continue
        targets, named = action_targets(rule, options, crms)
        for name in targets if named else [n for n in targets if n in crms]:
            conn = known.get(name)
            if conn is None or conn.type not in connectors:
                continue   # an unknown connection name is reported by the rule files' own checks
            if hasattr(connectors[conn.type].Client, method):
                continue
            why = getattr(module, "REFUSED", {}).get(conn.type) or f"a {conn.type} connection cannot {spec.verb}"
            errors.append(ConfigError(rule.file, spec.line, f'rule "{rule.name}": {spec.verb} → not supported '
                                      f"for {conn.type} (connection {name!r}): {why}"))
    return errors


def unsupported_options(rules: list, connections: Any, connectors: dict[str, Any]) -> list[ConfigError]:
    """Every action asking for an option (OPTIONS) of a verb whose client method, on the connection it
    acts on, does not take it: refused here rather than failing on every record. `on:` naming none:
    every connection that can do the verb."""
    errors: list[ConfigError] = []
    known = getattr(connections, "connections", None) or {}
    for rule, spec, options in each_action(rules):
        if spec.verb not in OPTIONS:
            continue
        option, why = OPTIONS[spec.verb]
        if not options.get(option):   # not asked for (None, false, an empty list)
            continue
        doers = {name: conn.type for name, conn in known.items()
                 if conn.type in connectors and hasattr(connectors[conn.type].Client, spec.verb)}
        for name in action_targets(rule, options, doers)[0]:
            kind = doers.get(name)
            if kind and option not in inspect.signature(getattr(connectors[kind].Client, spec.verb)).parameters:
                errors.append(ConfigError(rule.file, spec.line, f'rule "{rule.name}": {spec.verb} → '
                                          f"{option}: not supported for {kind} (connection {name!r}); {why}"))
    return errors
