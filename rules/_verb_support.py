"""Start-up checks shared by verbs that only some CRMs can do (set_responsible, delete_entity,
notify). Not a verb: rules/__init__ skips modules whose name starts with "_".

A verb module that sets `CLIENT_METHOD` (the client method its steps call) is refused at start-up,
with the rule file's line, for every connection whose client has no such method; `REFUSED` gives,
per connector type, why and what to do instead. The action's CRM is its `connection:`, else each
CRM connection the rule's `on:` names (a Telegram or form connection in `on:` is skipped: the step
then goes to the CRM of the record the event is bound to, which only run time knows).
"""
from __future__ import annotations

from typing import Any

from config.loader import ConfigError


def _is_crm(connectors: dict[str, Any], kind: str) -> bool:
    client = getattr(connectors.get(kind), "Client", None)
    return all(hasattr(client, m) for m in ("get_entity", "set_fields"))


def unsupported_verbs(rules: list, connections: Any, modules: dict[str, Any],
                      connectors: dict[str, Any]) -> list[ConfigError]:
    """ConfigErrors for every action of a CLIENT_METHOD verb aimed at a connection that cannot do it.
    `connectors`: connector type → module (connectors.CONNECTORS, passed in: rules never import a
    vendor's connector, tests/test_layout.py)."""
    errors: list[ConfigError] = []
    known = getattr(connections, "connections", None) or {}
    for rule in rules:
        for spec in (*rule.actions, *rule.otherwise):
            module = modules.get(spec.verb)
            method = getattr(module, "CLIENT_METHOD", None)
            if method is None:
                continue
            options = spec.options if isinstance(spec.options, dict) else {}
            named = options.get("connection")
            if named:
                targets = [named]
            else:
                targets = [n for n in rule.trigger.connections if n in known and _is_crm(connectors, known[n].type)]
                if not rule.trigger.connections:   # `on:` names none: every CRM connection may be the one
                    targets = [n for n, c in known.items() if _is_crm(connectors, c.type)]
            for name in targets:
                conn = known.get(name)
                if conn is None or conn.type not in connectors:
                    continue   # an unknown connection name is reported by the rule files' own checks
                if hasattr(connectors[conn.type].Client, method):
                    continue
                why = getattr(module, "REFUSED", {}).get(conn.type) or f"a {conn.type} connection cannot {spec.verb}"
                errors.append(ConfigError(rule.file, spec.line, f'rule "{rule.name}": {spec.verb} → not supported '
                                          f"for {conn.type} (connection {name!r}): {why}"))
    return errors
