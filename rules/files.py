"""Rule files: YAML with line marks → marshmallow → a RuleSet, or every error at once.

Each error starts with `file:line:`, names the rule and the key, says what was expected
and quotes what was found:

    config/rules/agency.yaml:14: rule "Brief reminder" → do[1] → move_to_stage: expected a stage name or id, found ['Brief', 'Done']
"""
from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields

from config.loader import ConfigError, ConfigErrors, LineDict, did_you_mean, line_of, load_yaml
from connectors.base import EVENT_KINDS
from rules.calendar import CalendarError, WorkingCalendar, parse_duration
from rules.conditions import validate as condition_problem
from rules.engine import ActionSpec, CancelOn, Delay, Rule, RuleSet, TRIGGER_FILTERS, Trigger, filter_problem, rule_id
from rules.templates import TemplateProblem, check_expression, check_syntax, is_template

DELAY_KEYS = ("after", "at", "before", "every")


class RuleSchema(Schema):
    """The keys of one rule; the values are checked in detail below."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, metadata={"expected": "a rule name"})
    description = fields.String(metadata={"expected": "a description"})
    enabled = fields.Boolean(load_default=True, metadata={"expected": "true or false"})
    on = fields.Raw(required=True, metadata={"expected": "an event kind or a mapping with 'event:'"})
    if_ = fields.List(fields.Raw(), data_key="if", load_default=list, metadata={"expected": "a list of conditions"})
    while_ = fields.List(fields.Raw(), data_key="while", load_default=list, metadata={"expected": "a list of conditions"})
    after = fields.Raw(metadata={"expected": "a duration such as '3 working days', or {field, by}"})
    at = fields.Raw(metadata={"expected": "{field: <date field>, time: 'HH:MM'}"})
    before = fields.Raw(metadata={"expected": "{field: <date field>, by: <duration>}"})
    every = fields.Raw(metadata={"expected": "{interval: <duration>, start: <duration>, until: [conditions]}"})
    calendar = fields.String(load_default=None, metadata={"expected": "a calendar name from connections.yaml"})
    do = fields.List(fields.Raw(), required=True, metadata={"expected": "a list of actions"})
    otherwise = fields.List(fields.Raw(), metadata={"expected": "a list of actions for when a condition fails"})
    cancel_on = fields.Raw(metadata={"expected": "{event: <kind>, entity: 'type:id'}"})
    for_each = fields.String(metadata={"expected": "an expression giving a list, e.g. entity.fields['Bloggers']"})
    keep_timer = fields.Boolean(load_default=False, metadata={"expected": "true or false"})
    restart = fields.Boolean(load_default=True, metadata={"expected": "true or false"})


class _Collector:
    """Collects errors for one file, each stamped with the line of what it is about."""

    def __init__(self, shown: str):
        self.shown = shown
        self.errors: list[ConfigError] = []

    def add(self, node: Any, key: Any, crumb: str, message: str) -> None:
        self.errors.append(ConfigError(self.shown, line_of(node, key, line_of(node, default=1)),
                                       f"{crumb}{message}"))


def load_rules(rules_dir: Path, modules: Mapping[str, Any], *, calendars: Mapping[str, Any] | None = None,
               connections: Mapping[str, Any] | None = None, base: Path | None = None,
               calendars_file: str = "connections.yaml") -> RuleSet:
    """Load every `*.yaml` in rules_dir (sorted by name); raise ConfigErrors listing all problems.
    A calendar that is wrong is reported once, in `calendars_file` (the path as given); rules that
    name it are not reported again."""
    errors: list[ConfigError] = []
    ruleset = RuleSet(calendars_known=calendars is not None)
    broken: set[str] = set()
    for name, cfg in (calendars or {}).items():
        try:
            ruleset.calendars[name] = WorkingCalendar.from_config(cfg)
        except CalendarError as exc:
            broken.add(name)
            errors.append(ConfigError(calendars_file, line_of(cfg, default=1), f"calendar {name!r}: {exc}"))
    ruleset.broken_calendars = broken
    for conn in (connections or {}).values():
        if getattr(conn, "calendar", None):
            ruleset.connection_calendars[conn.name] = conn.calendar
    files = sorted(rules_dir.glob("*.yaml")) + sorted(rules_dir.glob("*.yml")) if rules_dir.is_dir() else []
    seen: dict[str, str] = {}
    for path in files:
        shown = _shown(path, base)
        try:
            doc = load_yaml(path, shown)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        col = _Collector(shown)
        for rule in _rules_of(doc, col, modules, ruleset, connections):
            if rule.name in seen:
                col.errors.append(ConfigError(shown, rule.line, f'rule "{rule.name}": the name is '
                                              f"used twice (also at {seen[rule.name]})"))
            seen[rule.name] = rule.where
            ruleset.rules.append(rule)
        errors.extend(col.errors)
    if errors:
        failed = ConfigErrors(errors)
        failed.ruleset = ruleset   # the rules that did load, for the checks that come after (runtime)
        raise failed
    return ruleset


def _shown(path: Path, base: Path | None) -> str:
    try:
        return str(path.relative_to(base)) if base else str(path)
    except ValueError:
        return str(path)


def _rules_of(doc: Any, col: _Collector, modules, ruleset: RuleSet, connections) -> list[Rule]:
    defaults: Mapping[str, Any] = {}
    items = doc
    if isinstance(doc, dict):
        defaults = doc.get("defaults") or {}
        problem = _calendar_problem(defaults.get("calendar") if isinstance(defaults, dict) else None, ruleset)
        if problem:   # said once, where it is written, not once per rule
            col.add(defaults, "calendar", "", f"defaults → {problem}")
        named = defaults.get("connection") if isinstance(defaults, dict) else None
        for conn in (named if isinstance(named, list) else [named] if named else []):
            if connections is not None and conn not in connections:
                col.add(defaults, "connection", "", f"defaults → connection: no connection {conn!r} in "
                                                    f"connections.yaml{did_you_mean(conn, connections)}")
        items = doc.get("rules")
        extra = sorted(set(doc) - {"defaults", "rules"})
        if extra:
            col.add(doc, extra[0], "", f"unknown key {extra[0]!r}; expected 'defaults:' and 'rules:'")
    if doc is None:
        return []
    if not isinstance(items, list):
        col.add(doc, "rules", "", f"expected a list of rules under 'rules:', found {items!r}")
        return []
    rules = []
    for index, item in enumerate(items):
        rule = _rule(item, index, items, defaults, col, modules, ruleset, connections)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(item: Any, index: int, parent: list, defaults: Mapping[str, Any], col: _Collector, modules,
          ruleset: RuleSet, connections) -> Rule | None:
    if not isinstance(item, dict):
        col.add(parent, index, f"rules[{index}]: ", f"expected a rule (a mapping with name, on, do), found {item!r}")
        return None
    crumb = f'rule "{item.get("name", f"#{index + 1}")}" → '
    before = len(col.errors)
    try:
        data = RuleSchema().load(item)
    except ValidationError as exc:
        _report(exc.messages, item, RuleSchema(), col, crumb)
        return None
    trigger = _trigger(item["on"], item, defaults, col, crumb, connections)
    conditions = _conditions(item.get("if") or [], item, "if", col, crumb)
    guard = _conditions(item.get("while") or [], item, "while", col, crumb)
    delay = _delay(item, col, crumb)
    calendar = data["calendar"] or defaults.get("calendar")
    problem = _calendar_problem(data["calendar"], ruleset)
    if problem:
        col.add(item, "calendar", crumb, problem)
    # `do: []` with `otherwise:` is a gate: nothing to do when the conditions hold
    gate = item["do"] == [] and bool(item.get("otherwise"))
    actions = [] if gate else _actions(item["do"], col, crumb, modules)
    otherwise = _actions(item["otherwise"], col, crumb + "otherwise → ", modules) if "otherwise" in item else []
    cancel_on: list[CancelOn] = []
    if "cancel_on" in item and delay is None:
        col.add(item, "cancel_on", crumb, "cancel_on: only a delayed rule (after/at/before/every) has a timer to cancel")
    elif "cancel_on" in item:
        cancel_on = _cancel_on(item, defaults, trigger, col, crumb, connections)
    for_each = data.get("for_each")
    if for_each:
        try:
            check_expression(for_each)
        except TemplateProblem as exc:
            col.add(item, "for_each", crumb, f"for_each: {exc}")
    if not data["restart"] and (delay is None or delay.kind == "every"):
        col.add(item, "restart", crumb, "restart: false keeps a pending timer where it is: only a rule with "
                "after/at/before has one (found " + ("no delay" if delay is None else "every") + ")")
    if len(col.errors) > before or not data["enabled"]:
        return None
    return Rule(id=rule_id(col.shown, data["name"]), name=data["name"], file=col.shown,
                line=line_of(parent, index), trigger=trigger, conditions=tuple(conditions),
                delay=delay, guard=tuple(guard), actions=tuple(actions), calendar=calendar,
                otherwise=tuple(otherwise), for_each=for_each, cancel_on=tuple(cancel_on),
                keep_timer=data["keep_timer"], restart=data["restart"])


def _calendar_problem(calendar: Any, ruleset: RuleSet) -> str | None:
    """A calendar a rule names that connections.yaml does not define (one it defines wrongly is
    reported there, once)."""
    known = set(ruleset.calendars) | ruleset.broken_calendars
    if not calendar or not ruleset.calendars_known or calendar in known:
        return None
    return f"calendar: no calendar {calendar!r} in connections.yaml{did_you_mean(calendar, known)}"


def _report(messages: Any, node: Any, schema: Schema, col: _Collector, crumb: str, prefix: str = "") -> None:
    """Turn marshmallow's messages into lines that quote what was found."""
    by_key = {f.data_key or name: f for name, f in schema.fields.items()}
    for key, problem in messages.items():
        field = by_key.get(key)
        if key == "_schema" or field is None and problem == ["Unknown field."]:
            known = ", ".join(sorted(by_key))
            col.add(node, key, crumb, f"{prefix}unknown key {key!r}; expected one of: {known}")
            continue
        found = node.get(key, None) if isinstance(node, dict) else None
        if isinstance(problem, list) and "Missing data for required field." in problem:
            col.add(node, None, crumb, f"{prefix}{key}: required; expected {field.metadata.get('expected', key)}")
            continue
        if isinstance(field, fields.Nested) and isinstance(problem, dict) and isinstance(found, dict):
            _report(problem, found, field.schema, col, crumb, f"{prefix}{key} → ")   # the inner key, its line
            continue
        expected = field.metadata.get("expected", key) if field else key
        col.add(node, key, crumb, f"{prefix}{key}: expected {expected}, found {found!r}")


def _trigger(on: Any, item: dict, defaults: Mapping[str, Any], col: _Collector, crumb: str,
             connections) -> Trigger:
    spec = {"event": on} if isinstance(on, (str, list)) else on
    if not isinstance(spec, dict):
        col.add(item, "on", crumb, f"on: expected an event kind or a mapping with 'event:', found {on!r}")
        return Trigger(events=())
    schedule = _schedule(spec, col, crumb) if "schedule" in spec else None
    events = spec.get("event", "schedule.tick" if "schedule" in spec else None)
    events = events if isinstance(events, list) else [events]
    for kind in events:
        if kind not in EVENT_KINDS:
            col.add(spec if isinstance(spec, dict) and hasattr(spec, "lines") else item,
                    "event" if hasattr(spec, "lines") else "on", crumb,
                    f"on: unknown event kind {kind!r}; expected one of: {', '.join(EVENT_KINDS)}")
    conns = spec.get("connection", defaults.get("connection"))
    conns = [] if conns is None else (conns if isinstance(conns, list) else [conns])
    for conn in conns if "connection" in spec else ():   # `defaults:`'s own is said once, there
        if connections is not None and conn not in connections:
            col.add(spec if hasattr(spec, "lines") else item, "connection", crumb,
                    f"on → connection: no connection {conn!r} in connections.yaml{did_you_mean(conn, connections)}")
    known = {"event", "connection", "entity", "schedule", *TRIGGER_FILTERS}
    for key in spec:
        if key not in known:
            col.add(spec, key, crumb, f"on: unknown key {key!r}; expected one of: {', '.join(sorted(known))}")
    filters = tuple((k, spec[k]) for k in TRIGGER_FILTERS if k in spec)
    for key, value in filters:
        problem = filter_problem(key, value)
        if problem:
            col.add(spec if hasattr(spec, "lines") else item, key, crumb, f"on → {problem}")
    return Trigger(events=tuple(str(e) for e in events), connections=tuple(conns),
                   entity=spec.get("entity"), filters=filters, schedule=schedule)


def _schedule(spec: dict, col: _Collector, crumb: str) -> tuple[time, bool] | None:
    value = spec["schedule"]
    value = {"at": value} if isinstance(value, str) else value
    try:
        if not isinstance(value, dict) or set(value) - {"at", "working_days"}:
            raise ValueError(f"expected {{at: 'HH:MM', working_days: true}}, found {spec['schedule']!r}")
        return _clock(value.get("at")), bool(value.get("working_days", True))
    except ValueError as exc:
        col.add(spec, "schedule", crumb, f"on → schedule: {exc}")
        return None


def _cancel_on(item: dict, defaults: Mapping[str, Any], trigger: Trigger, col: _Collector, crumb: str,
               connections) -> list[CancelOn]:
    """`cancel_on:` one mapping or a list: a trigger plus `entity:` ("type:id" template)."""
    value = item["cancel_on"]
    specs = value if isinstance(value, list) else [value]
    result = []
    for spec in specs:
        if not isinstance(spec, dict) or not spec.get("entity") or not spec.get("event"):
            col.add(item, "cancel_on", crumb, "cancel_on: expected {event: <kind>, entity: 'type:id'}, "
                                              f"found {spec!r}")
            continue
        on = {k: v for k, v in spec.items() if k not in ("entity", "timer_connection")}
        own = spec.get("timer_connection") or (trigger.connections[0] if len(trigger.connections) == 1 else None)
        if own is None:
            col.add(item, "cancel_on", crumb, "cancel_on: timer_connection: required, since the rule's "
                                              "'on:' does not name exactly one connection")
            continue
        cancel_trigger = _trigger(on, item, {}, col, crumb + "cancel_on → ", connections)
        result.append(CancelOn(trigger=cancel_trigger, entity=str(spec["entity"]), connection=own))
    return result


def _conditions(items: list, item: dict, key: str, col: _Collector, crumb: str) -> list[dict]:
    result = []
    for i, cond in enumerate(items):
        problem = condition_problem(cond)
        if problem is None and isinstance(cond, dict) and "expr" in cond:
            try:
                check_expression(str(cond["expr"]))
            except TemplateProblem as exc:
                problem = str(exc)
        if problem:
            col.add(items, i, crumb, f"{key}[{i}]: {problem}")
        else:
            kept = LineDict(cond)   # a copy that keeps its line, for the checks that come later (validate --online)
            kept.line, kept.lines = line_of(items, i), dict(getattr(cond, "lines", None) or {})
            result.append(kept)
    return result


def _delay(item: dict, col: _Collector, crumb: str) -> Delay | None:
    given = [k for k in DELAY_KEYS if k in item]
    if not given:
        return None
    if len(given) > 1:
        col.add(item, given[1], crumb, f"{given[1]}: a rule waits one way; found both {given[0]!r} and {given[1]!r}")
        return None
    kind, value = given[0], item[given[0]]
    try:
        if kind == "after" and isinstance(value, str):
            return Delay("after", duration=parse_duration(value))
        if kind == "after" and isinstance(value, dict) and "cycle" in value:
            unknown = set(value) - {"cycle", "default", "time"}
            if unknown:
                raise CalendarError(f"unknown key {min(unknown)!r}; expected cycle, default, time")
            if not isinstance(value["cycle"], str) or not value["cycle"].strip():
                raise CalendarError(f"cycle: expected the name of a field holding a number of days, found {value['cycle']!r}")
            default = parse_duration(str(value["default"])) if value.get("default") not in (None, "") else None
            if default is not None and default.upto is not None:
                raise CalendarError(f"default: expected one duration such as '30 days', found {value['default']!r}")
            return Delay("after", cycle=value["cycle"].strip(), default=default,
                         at_time=_clock(value["time"]) if value.get("time") else None,
                         line=(getattr(item, "lines", None) or {}).get("after", 0))
        if kind == "every":
            spec = value if isinstance(value, dict) else {"interval": value}
            until = spec.get("until") or []
            for i, cond in enumerate(until):
                problem = condition_problem(cond)
                if problem:
                    col.add(until, i, crumb, f"every → until[{i}]: {problem}")
            unknown = set(spec) - {"interval", "until", "start", "field", "time"}
            if unknown:
                raise CalendarError(f"unknown key {min(unknown)!r}; expected interval, start, field, time, until")
            starts = spec.get("start") or []
            starts = starts if isinstance(starts, list) else [starts]
            return Delay("every", duration=parse_duration(str(spec.get("interval"))),
                         until=tuple(dict(c) for c in until), start=tuple(parse_duration(str(d)) for d in starts),
                         field=str(spec["field"]) if spec.get("field") else None,
                         at_time=_clock(spec["time"]) if spec.get("time") else None)
        if not isinstance(value, dict) or not value.get("field"):
            raise CalendarError(f"expected {{field: <date field>{', by: <duration>' if kind != 'at' else ''}}}"
                                f"{' or {cycle: <field of days>, default: <duration>, time: <HH:MM>}' if kind == 'after' else ''}"
                                f", found {value!r}")
        by = value.get("by") or value.get("offset")
        at_time = value.get("time")
        return Delay(kind, field=str(value["field"]), duration=parse_duration(str(by)) if by else None,
                     at_time=_clock(at_time) if at_time else None)
    except (CalendarError, ValueError) as exc:
        col.add(item, kind, crumb, f"{kind}: {exc}")
        return None


def _clock(value: Any) -> time:
    try:
        hours, minutes = str(value).split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValueError(f"expected a time of day such as '09:30', found {value!r}") from None


def _templates_compile(options: dict, node: Any, items: list, i: int, col: _Collector, crumb: str) -> bool:
    ok = True
    for key, value in options.items():
        try:
            check_syntax(value)
        except TemplateProblem as exc:
            where = node if isinstance(node, dict) else items
            col.add(where, key if isinstance(node, dict) else i, crumb, f" → {key}: {exc}")
            ok = False
    return ok


def _actions(items: list, col: _Collector, crumb: str, modules: Mapping[str, Any]) -> list[ActionSpec]:
    result = []
    if not items:
        col.add(items, None, crumb, "do: expected at least one action, found none")
    for i, action in enumerate(items):
        where = f"do[{i}]"
        if not isinstance(action, dict) or len(action) != 1:
            col.add(items, i, crumb, f"{where}: expected one action such as {{create_task: …}}, found {action!r}")
            continue
        verb, options = next(iter(action.items()))
        module = modules.get(verb)
        if module is None:
            col.add(items, i, crumb, f"{where}: unknown action {verb!r}; expected one of: {', '.join(sorted(modules))}")
            continue
        if not isinstance(options, dict):
            shorthand = getattr(module, "SHORTHAND", None)
            if shorthand is None:
                col.add(items, i, crumb, f"{where} → {verb}: expected a mapping of options, found {options!r}")
                continue
            options = {shorthand: options}
        before = len(col.errors)
        checked = {k: v for k, v in options.items() if k != "entity"}  # `entity:` is the engine's
        try:
            module.Options(unknown=RAISE).load(checked)
        except ValidationError as exc:
            # a value that is a template is checked again after rendering, at run time
            messages = {k: v for k, v in exc.messages.items() if not is_template(checked.get(k))}
            if messages:
                node = action[verb] if isinstance(action[verb], dict) else action
                _report(messages, options, module.Options(), col, crumb, f"{where} → {verb} → ")
                _restamp(col, before, node, items, i)
                continue
        if not _templates_compile(options, action[verb], items, i, col, f"{crumb}{where} → {verb}"):
            continue
        kept = LineDict(options)   # a copy that keeps each option's line, for the later checks
        kept.line, kept.lines = line_of(items, i), dict(getattr(options, "lines", None) or {})
        result.append(ActionSpec(verb=verb, options=kept, line=line_of(items, i)))
    return result


def _restamp(col: _Collector, before: int, node: Any, items: list, i: int) -> None:
    """Errors inside shorthand options have no lines of their own: use the action's line."""
    for n in range(before, len(col.errors)):
        if col.errors[n].line <= 1:
            col.errors[n] = ConfigError(col.shown, line_of(items, i), col.errors[n].message)

