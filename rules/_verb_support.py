"""Start-up checks of what only some CRMs can do. Not a verb: rules/__init__ skips modules whose
name starts with "_".

- A verb module that sets `CLIENT_METHOD` (the action method its steps call: set_responsible,
  delete_entity, notify) is refused for every connection whose client cannot do it: the method is
  not in the client's `capabilities` or, for a pipeline step (pipeline/steps), not all the verbs
  the step REQUIRES are; `REFUSED` gives, per connector type, why and what to do instead
  (unsupported_verbs).
- An option only some clients can do is refused where they cannot (unsupported_options): one done
  by a step (`move_to_stage: {only_forward}` plans move_forward) by the step's REQUIRES, one that
  is a parameter of the client's verb (`create_task: {bind}`) by that method's signature.
- find_or_create's own check (its `by:` against a client's FIND_BY) walks the actions the same way.

Each error names the rule file's line. The action's CRM is its `connection:`, else the connections
the rule's `on:` names, else a fallback the check gives (action_targets). `connectors` is
connectors.CONNECTORS and `steps` pipeline.steps.STEPS, passed in: rules never import a vendor's
connector (tests/test_layout.py), nor the pipeline that runs them.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

from config.loader import ConfigError
from connectors.base import is_crm_client

# option → (verb, why it is refused where the connection's client cannot do it)
OPTIONS = {"move_to_stage": ("only_forward", "only amoCRM and Bitrix24 read their stages' order"),
           "create_task": ("bind", "its tasks belong to one record only; Bitrix24 binds a task to several")}
# (verb, option) → the step the option makes the rule plan instead of the verb's own method
STEP_OPTIONS = {("move_to_stage", "only_forward"): "move_forward"}


def can(client: Any, method: str, steps: dict[str, Any]) -> bool:
    """Can a connector's Client run an action method: a step whose REQUIRES are all among its
    capabilities, or a verb of its own capabilities?"""
    step = steps.get(method)
    needed = step.REQUIRES if step is not None else frozenset({method})
    return needed <= getattr(client, "capabilities", frozenset())


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
                      connectors: dict[str, Any], steps: dict[str, Any]) -> list[ConfigError]:
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
            if can(connectors[conn.type].Client, method, steps):
                continue
            why = getattr(module, "REFUSED", {}).get(conn.type) or f"a {conn.type} connection cannot {spec.verb}"
            errors.append(ConfigError(rule.file, spec.line, f'rule "{rule.name}": {spec.verb} → not supported '
                                      f"for {conn.type} (connection {name!r}): {why}"))
    return errors


def unsupported_options(rules: list, connections: Any, connectors: dict[str, Any],
                        steps: dict[str, Any]) -> list[ConfigError]:
    """Every action asking for an option (OPTIONS) that the client of the connection it acts on
    cannot do: refused here rather than failing on every record. `on:` naming none: every
    connection whose client has the verb."""
    errors: list[ConfigError] = []
    known = getattr(connections, "connections", None) or {}
    for rule, spec, options in each_action(rules):
        if spec.verb not in OPTIONS:
            continue
        option, why = OPTIONS[spec.verb]
        if not options.get(option):   # not asked for (None, false, an empty list)
            continue
        doers = {name: conn.type for name, conn in known.items()
                 if conn.type in connectors and spec.verb in connectors[conn.type].Client.capabilities}
        for name in action_targets(rule, options, doers)[0]:
            kind = doers.get(name)
            if kind and not _takes(connectors[kind].Client, spec.verb, option, steps):
                errors.append(ConfigError(rule.file, spec.line, f'rule "{rule.name}": {spec.verb} → '
                                          f"{option}: not supported for {kind} (connection {name!r}); {why}"))
    return errors


def _takes(client: Any, verb: str, option: str, steps: dict[str, Any]) -> bool:
    """Can this Client do `verb` with `option`: through the step the option plans, or as a
    parameter of its own verb method?"""
    step = STEP_OPTIONS.get((verb, option))
    if step is not None:
        return can(client, step, steps)
    return option in inspect.signature(getattr(client, verb)).parameters
