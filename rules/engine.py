"""The rule engine: match an event against the rules and plan what to do. No I/O.

`plan()` takes an event, the entity as it is now, the rule set and the moment, and returns
a `Plan`: which rules matched and why, which did not and why not, the actions to run, the
timers to set and the timers to cancel. The worker executes a plan; the dry run prints it.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from marshmallow import ValidationError

from connectors.base import Entity, Event
from rules import _reasons as reasons
from rules.calendar import Duration, WorkingCalendar, parse_duration
from rules.conditions import (
    check_all,
    describe,
    name_matches,
    ref_matches,
    wildcard_matches,
)
from rules.templates import (
    TemplateProblem,
    check_syntax,
    evaluate,
    render,
    render_value,
)

DEFAULT_CALENDAR = WorkingCalendar.from_config({})


@dataclass(frozen=True)
class Trigger:
    """`on:`: which events a rule listens to."""

    events: tuple[str, ...]
    connections: tuple[str, ...] = ()
    entity: str | None = None
    filters: tuple[tuple[str, Any], ...] = ()     # stage, from_stage, pipeline, field, button, text, chat
    schedule: tuple[time, bool] | None = None     # (time of day, working days only) for schedule.tick


@dataclass(frozen=True)
class CancelOn:
    """`cancel_on:`: an event about another record that cancels this rule's timer."""

    trigger: Trigger
    entity: str                      # a template giving "type:id" of the record the timer waits on
    connection: str                  # the connection of the timer's record


@dataclass(frozen=True)
class Delay:
    """`after:` / `at:` / `before:` / `every:`: when a rule acts, if not at once."""

    kind: str                       # after | at | before | every
    duration: Duration | None = None
    field: str | None = None
    at_time: time | None = None
    until: tuple[dict, ...] = ()
    start: tuple[Duration, ...] = ()  # every: the first firing, from now or from `field` (10 days; 7 days + 5 working days)
    cycle: str | None = None          # after: {cycle: <field>}: a number of days written in that field (E3)
    default: Duration | None = None   # …and the wait when the field is empty or not a number
    line: int = 0                     # where `after:`/`at:`/… stands in its file (0: not known)


@dataclass(frozen=True)
class ActionSpec:
    verb: str
    options: dict[str, Any]
    line: int


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    file: str
    line: int
    trigger: Trigger
    conditions: tuple[dict, ...] = ()
    delay: Delay | None = None
    guard: tuple[dict, ...] = ()
    actions: tuple[ActionSpec, ...] = ()
    calendar: str | None = None
    otherwise: tuple[ActionSpec, ...] = ()     # run when the trigger matched but a condition failed
    for_each: str | None = None                 # a template giving a list: actions run per item
    cancel_on: tuple[CancelOn, ...] = ()
    keep_timer: bool = False                    # the guard is checked only when the timer fires
    restart: bool = True                        # False: a later matching event leaves a pending timer where it is

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    calendars: dict[str, WorkingCalendar] = field(default_factory=dict)
    connection_calendars: dict[str, str] = field(default_factory=dict)
    calendars_known: bool = True     # False while connections.yaml could not be read: no cross-check
    broken_calendars: set[str] = field(default_factory=set)   # defined wrongly: reported once, where they are

    def calendar_for(self, rule: Rule, connection: str) -> WorkingCalendar:
        name = rule.calendar or self.connection_calendars.get(connection)
        return self.calendars.get(name, DEFAULT_CALENDAR) if name else DEFAULT_CALENDAR

    def by_id(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


@dataclass(frozen=True)
class PlannedAction:
    """One call to make: which connection's client, which method, which arguments."""

    rule: str
    rule_id: str
    step: int
    connection: str
    method: str
    args: dict[str, Any]
    key: str                         # idempotency key: event id + rule + step

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.connection}.{self.method}({args})"


@dataclass(frozen=True)
class PlannedTimer:
    rule: str
    rule_id: str
    timer_id: str
    fire_at: str                     # ISO 8601 with offset
    entity: dict[str, str]
    event: dict[str, Any]
    occurrence: int = 0
    restart: bool = True             # False: set only when no timer of this id is pending (timers.apply)


class Skip(tuple):
    """A rule that did not act: `(rule name, reason)` as before (so `for name, reason in
    plan.skipped` and comparisons with plain tuples still work), plus why in parts for the
    decision history: `stage` (trigger, condition, timer, guard), `key` (the trigger key that did
    not match, or the failed condition as written), the values compared (`have`, `want`), and
    `listening` (False: the rule listens to other event kinds, the least interesting skip)."""

    def __new__(cls, rule: str, reason: str, *, rule_id: str = "", stage: str = "", key: Any = None,
                have: Any = None, want: Any = None, listening: bool = True) -> "Skip":
        skip = super().__new__(cls, (rule, reason))
        skip.rule_id, skip.stage, skip.key, skip.have, skip.want = rule_id, stage, key, have, want
        skip.listening = listening
        return skip

    @property
    def rule(self) -> str:
        return self[0]

    @property
    def reason(self) -> str:
        return self[1]

    def details(self) -> dict[str, Any]:
        """What the decision history keeps of it (JSON-ready)."""
        out = {"rule": self[0], "rule_id": self.rule_id, "stage": self.stage, "reason": self[1]}
        out.update({k: v for k, v in (("key", self.key), ("have", self.have), ("want", self.want))
                    if v is not None})
        return out


@dataclass
class Plan:
    matched: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # Skip entries
    actions: list[PlannedAction] = field(default_factory=list)
    timers: list[PlannedTimer] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """What a rule module returns: one call, not yet numbered."""

    method: str
    args: dict[str, Any]
    connection: str | None = None


@dataclass
class RuleContext:
    """What a rule module sees while planning."""

    event: Event
    entity: dict[str, Any]
    rule: Rule
    now: datetime
    calendar: WorkingCalendar
    template: dict[str, Any]

    target: dict[str, str] | None = None     # an action's `entity:` override

    @property
    def entity_ref(self) -> dict[str, str]:
        """The entity an action works on: the event's, unless the action names another."""
        return self.target or {"type": self.event.entity.type, "id": self.event.entity.id}

    @property
    def default_connection(self) -> str:
        """Where an action without `connection:` goes: a button press or chat message bound to a
        CRM record (data.record) acts on that record's CRM, anything else on the event's own."""
        return (self.event.data.get("record") or {}).get("connection") or self.event.connection

    def step(self, method: str, connection: str | None = None, **args: Any) -> Step:
        return Step(method=method, args=args, connection=connection)

    def moment(self, value: Any) -> datetime:
        """A duration from now ("1 working day"), a date or datetime, or a unix timestamp."""
        if isinstance(value, str) and re.search(r"[a-z]", value.replace("T", "")):
            return parse_duration(value).apply(self.now, self.calendar)
        return to_datetime(value, self.calendar, time(9, 0))


Module = Any  # a rules/<verb>.py module: NAME, Options, plan(ctx, options) -> list[Step]


def timer_id(rule: Rule, connection: str, entity: Entity | dict, occurrence: int = 0) -> str:
    ent = entity if isinstance(entity, Entity) else Entity(entity["type"], entity["id"])
    suffix = f":{occurrence}" if occurrence else ""
    return f"timer:{rule.id}:{connection}:{ent}{suffix}"


def rule_id(file: str, name: str) -> str:
    return hashlib.sha1(f"{file}\0{name}".encode()).hexdigest()[:12]


def template_context(event: Event, entity: dict[str, Any], rule: Rule, now: datetime) -> dict[str, Any]:
    return {"event": {"kind": event.kind, "connection": event.connection, "source": event.source,
                      "entity": {"type": event.entity.type, "id": event.entity.id},
                      "data": event.data, "occurred_at": event.occurred_at, "id": event.id},
            "entity": entity, "data": event.data, "now": now, "rule": rule.name,
            "actor": event.data.get("from"), "calendar": None}


def match_trigger(trigger: Trigger, event: Event, entity: dict[str, Any]) -> str | None:
    """None if the trigger matches, else the first reason it does not."""
    missed = trigger_mismatch(trigger, event, entity)
    return missed[3] if missed else None


def trigger_mismatch(trigger: Trigger, event: Event, entity: dict[str, Any]) -> tuple[str, Any, Any, str] | None:
    """None if the trigger matches, else the first `on:` key that did not, as (key, what the event
    has, what the rule wants, reason)."""
    if event.kind not in trigger.events:
        return "event", event.kind, list(trigger.events), f"event is {event.kind}, rule listens to {', '.join(trigger.events)}"
    if trigger.connections and event.connection not in trigger.connections:
        return ("connection", event.connection, list(trigger.connections),
                f"connection is {event.connection!r}, not {describe(list(trigger.connections))}")
    if trigger.entity and event.entity.type != trigger.entity:
        return "entity", event.entity.type, trigger.entity, f"entity is a {event.entity.type}, not a {trigger.entity}"
    for name, wanted in trigger.filters:
        reason = _FILTERS[name](wanted, event, entity)
        if reason:
            return name, _FILTER_VALUES.get(name, lambda e, ent: None)(event, entity), wanted, reason
    return None


def first_failed(conditions: list[dict], template: dict[str, Any]) -> tuple[dict, str] | None:
    """The first condition that does not hold, as written in the rule, and why (check_all's reason)."""
    for condition in conditions:
        reason = check_all([condition], template)
        if reason:
            return condition, reason
    return None


def compared(condition: dict, template: dict[str, Any]) -> tuple[Any, Any]:
    """What a failed condition compared: (the record's value, the rule's), for the kinds that compare
    one value (field, stage, pipeline, responsible, tag, open_tasks); (None, None) for others, whose
    reason says it."""
    entity = template.get("entity") or {}
    kind = next(iter(condition), None)
    if kind == "field":
        ops = {k: v for k, v in condition.items() if k != "field"}
        return (entity.get("fields") or {}).get(condition["field"]), ops or None
    if kind in ("stage", "not_stage", "pipeline", "responsible"):
        ref = entity.get("pipeline" if kind == "pipeline" else "responsible" if kind == "responsible" else "stage")
        return (ref.get("name") or ref.get("id")) if isinstance(ref, dict) else ref, condition[kind]
    if kind == "tag":
        return list(entity.get("tags") or []), condition["tag"]
    if kind == "open_tasks":
        return len(entity.get("tasks") or []) if entity.get("tasks") is not None else None, condition["open_tasks"]
    return None, None


def _stage_filter(key: str, label: str) -> Callable[[Any, Event, dict], str | None]:
    def check(wanted: Any, event: Event, entity: dict) -> str | None:
        # the entity's fresh state has names; the event alone knows the previous stage
        ref = entity.get(key) or event.data.get(key)
        if ref_matches(ref, wanted):
            return None
        shown = (ref or {}).get("name") or (ref or {}).get("id") if isinstance(ref, dict) else None
        return f"{label} is {shown!r}, not {describe(wanted)}"
    return check


def _field_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    changed = set((event.data.get("changed") or {}).keys()) | set((event.data.get("fields") or {}).keys())
    names = wanted if isinstance(wanted, list) else [wanted]
    return None if changed & set(names) else f"field {describe(wanted)} did not change"


def _button_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    pressed = str(event.data.get("button", ""))
    names = wanted if isinstance(wanted, list) else [wanted]
    hit = any(pressed == str(n) or pressed.startswith(f"{n}:") for n in names)
    return None if hit else f"button is {pressed!r}, not {describe(wanted)}"


def _text_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    text = str(event.data.get("text", ""))
    return None if re.search(str(wanted), text) else f"text does not match {wanted!r}"


def _chat_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    chat = (event.data.get("chat") or {}).get("id")
    names = [str(w) for w in (wanted if isinstance(wanted, list) else [wanted])]
    return None if str(chat) in names else f"chat is {chat!r}, not {describe(wanted)}"


def _file_name_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    """`file_name:` a pattern (`*` = any text) or a template rendered against the entity, e.g.
    'Отчет по проекту "{{ entity.name }}"'; a list = any. See conditions.name_matches."""
    name = (event.data.get("file") or {}).get("name")
    patterns = wanted if isinstance(wanted, list) else [wanted]
    try:
        rendered = [render(str(p), {"entity": entity, "event": event.to_dict(), "data": event.data})
                    for p in patterns]
    except TemplateProblem as exc:
        return f"file_name: {exc}"
    if name and any(name_matches(name, p) for p in rendered):
        return None
    return f"file is {name!r}, not {describe(rendered if len(rendered) > 1 else rendered[0])}"


def _result_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    """`result:` the text a task was closed with (amoCRM's task result), whole, without regard to
    case (`*` = any text); a list = any."""
    result = event.data.get("result") or entity.get("result")
    patterns = wanted if isinstance(wanted, list) else [wanted]
    if result and any(wildcard_matches(result, p) for p in patterns):
        return None
    return f"task result is {result!r}, not {describe(wanted)}"


def _undo_filter(wanted: Any, event: Event, entity: dict) -> str | None:
    """`undo: false`: not the stage change crmbridge caused by undoing a refused move
    (`move_to_stage: {undo: true}`; the worker marks it `data.undo`)."""
    undo = bool(event.data.get("undo"))
    return None if undo == bool(wanted) else ("crmbridge put the record back here (undo)" if undo
                                              else "not a move crmbridge undid")


def _ref_value(key: str) -> Callable[[Event, dict], Any]:
    def value(event: Event, entity: dict) -> Any:
        ref = entity.get(key) or event.data.get(key)
        return (ref.get("name") or ref.get("id")) if isinstance(ref, dict) else ref
    return value


# what the event had for a trigger filter that did not match (the history keeps it beside the rule's)
_FILTER_VALUES: dict[str, Callable[[Event, dict], Any]] = {
    "stage": _ref_value("stage"), "from_stage": _ref_value("previous_stage"), "pipeline": _ref_value("pipeline"),
    "field": lambda e, ent: sorted(set((e.data.get("changed") or {})) | set((e.data.get("fields") or {}))),
    "button": lambda e, ent: e.data.get("button"), "text": lambda e, ent: e.data.get("text"),
    "chat": lambda e, ent: (e.data.get("chat") or {}).get("id"),
    "file_name": lambda e, ent: (e.data.get("file") or {}).get("name"),
    "result": lambda e, ent: e.data.get("result") or ent.get("result"),
    "undo": lambda e, ent: bool(e.data.get("undo"))}

_FILTERS = {"stage": _stage_filter("stage", "stage"),
            "from_stage": _stage_filter("previous_stage", "previous stage"),
            "pipeline": _stage_filter("pipeline", "pipeline"),
            "field": _field_filter, "button": _button_filter, "text": _text_filter,
            "chat": _chat_filter, "file_name": _file_name_filter, "result": _result_filter,
            "undo": _undo_filter}
TRIGGER_FILTERS = tuple(_FILTERS)


def filter_problem(name: str, value: Any) -> str | None:
    """What is wrong with a trigger filter's value (checked when the rule files load), or None."""
    if name == "undo" and not isinstance(value, bool):
        return f"undo: expected true or false, found {value!r}"
    if name in ("file_name", "result"):
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v.strip() for v in values):
            what = "a file name pattern such as 'Договор*'" if name == "file_name" else "a task result text"
            return f"{name}: expected {what} or a list of them, found {value!r}"
        for v in values:
            try:
                check_syntax(v)
            except TemplateProblem as exc:
                return f"{name}: {exc}"
    return None


def data_needs(rules: list[Rule], kinds: set[str] | None = None) -> set[str]:
    """What the worker must read besides the record itself for these rules (all of them, or those
    listening to `kinds` plus every guarded timer without `keep_timer`, whose guard any event may check):
    `tasks` (open_tasks, entity.tasks), `activity` (no_activity, stage_since, last_activity),
    `files` (has_file, entity.files), `contacts` (entity.contact_cards: the linked contacts with
    their fields; entity.main_contact.phone / .email: the deal's main contact), `parent` (a task's
    parent record: parent:, entity.parent.…), `deals` (new_deals, entity.client_deals: the deals of
    the record's contacts)."""
    needs: set[str] = set()
    for rule in rules:
        listening = kinds is None or bool(set(rule.trigger.events) & kinds)
        # another event checks a timer's guard only to cancel it, which `keep_timer` rules skip
        if not listening and not (rule.delay and rule.guard and not rule.keep_timer):
            continue
        # a `keep_timer` guard is read only when its timer fires (data_needs([rule]), kinds None)
        guard = () if kinds is not None and rule.keep_timer else rule.guard
        conditions = [*rule.conditions, *guard, *(rule.delay.until if rule.delay else ())]
        text = " ".join([repr(conditions), repr([a.options for a in (*rule.actions, *rule.otherwise)]),
                         rule.for_each or "", repr(rule.trigger.filters)])
        if not listening:  # another event may only check this timer's guard
            conditions, text = list(rule.guard), repr(list(rule.guard))
        for need, kinds_, words in _NEEDS:
            if any(f"'{k}'" in repr(conditions) for k in kinds_) or re.search(words, text):
                needs.add(need)
        if "'stage': 'current'" in repr(conditions) or "'stage': 'previous'" in repr(conditions):
            needs.add("activity")
    return needs


_NEEDS = (("tasks", ("open_tasks",), r"\.tasks\b"),
          ("activity", ("no_activity",), r"\b(last_activity|stage_since)\b"),
          ("files", ("has_file",), r"\.files\b"),
          ("contacts", (), r"\.contact_cards\b|\bmain_contact\.(?!id\b)\w+|main_contact\["),
          ("parent", ("parent",), r"parent\.(?!id\b|type\b)\w+|parent\["),
          ("deals", ("new_deals",), r"\.client_deals\b"))


def plan(event: Event, entity: dict[str, Any], ruleset: RuleSet, now: datetime,
         modules: dict[str, Module]) -> Plan:
    """Match one event against every rule: run what is due now, set or cancel timers."""
    result = Plan()
    for rule in ruleset.rules:
        cal = ruleset.calendar_for(rule, event.connection)
        ctx = RuleContext(event, entity, rule, now, cal, {**template_context(event, entity, rule, now), "calendar": cal})
        _cancel_on(rule, ctx, result)
        missed = trigger_mismatch(rule.trigger, event, entity)
        first = None if missed else first_failed(list(rule.conditions), ctx.template)
        failed = first[1] if first else None
        if missed:
            key, have, want, reason = missed
            result.skipped.append(Skip(rule.name, reason, rule_id=rule.id, stage="trigger", key=key,
                                       have=have, want=want, listening=key != "event"))
        elif first:
            have, want = compared(first[0], ctx.template)
            result.skipped.append(Skip(rule.name, failed, rule_id=rule.id, stage="condition", key=first[0],
                                       have=have, want=want))
        if missed or first:
            _maybe_cancel(rule, ctx, result)
            if failed and rule.otherwise:
                # why, in the rule's language and as data (missing fields), never the engine's English
                ctx.template.update(reasons.for_templates(first[0], ctx.template, reasons.language(rule)))
                _plan_actions(rule, ctx, modules, result, specs=rule.otherwise, tag="otherwise")
            continue
        if rule.delay is None:
            result.matched.append((rule.name, "trigger and conditions hold"))
            _plan_actions(rule, ctx, modules, result)
            continue
        _plan_timer(rule, ctx, result)
    return result


def plan_fired(timer: dict[str, Any], event: Event, entity: dict[str, Any], ruleset: RuleSet,
               now: datetime, modules: dict[str, Module]) -> Plan:
    """A timer fired: check its guard against fresh data, then plan its actions."""
    result = Plan()
    rule = ruleset.by_id(timer["rule_id"])
    if rule is None:
        result.skipped.append(Skip(timer["rule"], "the rule no longer exists in the rule files",
                                   rule_id=timer["rule_id"], stage="timer"))
        return result
    cal = ruleset.calendar_for(rule, event.connection)
    ctx = RuleContext(event, entity, rule, now, cal, {**template_context(event, entity, rule, now), "calendar": cal})
    first = first_failed(list(rule.guard), ctx.template)
    if first:
        have, want = compared(first[0], ctx.template)
        result.skipped.append(Skip(rule.name, f"guard no longer holds: {first[1]}", rule_id=rule.id,
                                   stage="guard", key=first[0], have=have, want=want))
        return result
    result.matched.append((rule.name, f"timer fired ({timer['fire_at']}), guard holds"))
    _plan_actions(rule, ctx, modules, result, occurrence=timer.get("occurrence", 0))
    if rule.trigger.schedule:
        result.timers.append(schedule_timer(rule, ruleset, max(now, datetime.fromisoformat(timer["fire_at"]))))
    if rule.delay and rule.delay.kind == "every":
        until = check_all(list(rule.delay.until), ctx.template) if rule.delay.until else "no stop condition"
        if until:  # the stop condition does not hold yet: go again
            _plan_timer(rule, ctx, result, occurrence=timer.get("occurrence", 0) + 1)
    return result


def _plan_actions(rule: Rule, ctx: RuleContext, modules: dict[str, Module], result: Plan,
                  occurrence: int = 0, specs: tuple[ActionSpec, ...] | None = None, tag: str = "") -> None:
    """Plan the rule's actions, once, or once per item of `for_each`."""
    suffix = (f"#{occurrence}" if occurrence else "") + (f"/{tag}" if tag else "")
    if rule.for_each and not tag:
        try:
            items = evaluate(rule.for_each, ctx.template)
        except TemplateProblem as exc:
            result.errors.append((rule.name, f"{rule.where}: for_each: {exc}"))
            return
        for index, item in enumerate(items or []):
            ctx.template.update(item=item, loop_index=index)
            _plan_specs(rule, ctx, modules, result, rule.actions, f"{suffix}[{index}]")
        return
    _plan_specs(rule, ctx, modules, result, specs or rule.actions, suffix)


def _plan_specs(rule: Rule, ctx: RuleContext, modules: dict[str, Module], result: Plan,
                specs: tuple[ActionSpec, ...], suffix: str) -> None:
    for number, spec in enumerate(specs):
        try:
            module = modules[spec.verb]
            rendered = render_value(spec.options, ctx.template)
            ctx.target = _target(rendered.pop("entity", None), ctx)
            options = module.Options().load(rendered)
            steps = module.plan(ctx, options)
        except ValidationError as exc:
            result.errors.append((rule.name, f"{rule.file}:{spec.line}: {spec.verb}: after rendering: {exc.messages}"))
            continue
        except (TemplateProblem, ValueError, KeyError, TypeError) as exc:
            result.errors.append((rule.name, f"{rule.file}:{spec.line}: {spec.verb}: {exc}"))
            continue
        for sub, step in enumerate(steps):
            index = f"{number}.{sub}" if len(steps) > 1 else str(number)
            result.actions.append(PlannedAction(
                rule=rule.name, rule_id=rule.id, step=number, connection=step.connection or ctx.default_connection,
                method=step.method, args=step.args, key=f"{ctx.event.id}|{rule.id}{suffix}|{index}"))


def _target(value: Any, ctx: RuleContext) -> dict[str, str] | None:
    """`entity: "contact:123"` (usually a template) → {"type", "id"}."""
    if value in (None, ""):
        return None
    kind, sep, ident = str(value).partition(":")
    if not sep or not kind or not ident.strip():
        raise ValueError(f"entity: expected 'type:id' such as 'contact:123', found {value!r}")
    return {"type": kind.strip(), "id": ident.strip()}


def _plan_timer(rule: Rule, ctx: RuleContext, result: Plan, occurrence: int = 0) -> None:
    try:
        fire_at = fire_time(rule.delay, ctx, first=occurrence == 0)
    except (ValueError, TypeError) as exc:
        result.skipped.append(Skip(rule.name, f"cannot compute when to fire: {exc}", rule_id=rule.id, stage="timer"))
        return
    if fire_at is None:
        field = rule.delay.cycle or rule.delay.field
        result.skipped.append(Skip(rule.name, f"field {field!r} is empty: nothing to wait for",
                                   rule_id=rule.id, stage="timer", key=field, have=None))
        _maybe_cancel(rule, ctx, result)
        return
    entity = ctx.entity_ref
    tid = timer_id(rule, ctx.event.connection, entity, occurrence if rule.delay.kind != "every" else 0)
    result.matched.append((rule.name, f"waits until {fire_at.isoformat()} ({describe_delay(rule.delay)})"))
    result.timers.append(PlannedTimer(rule=rule.name, rule_id=rule.id, timer_id=tid,
                                      fire_at=fire_at.isoformat(), entity=entity,
                                      event=ctx.event.to_dict(), occurrence=occurrence,
                                      restart=rule.restart or occurrence > 0))


def _cancel_on(rule: Rule, ctx: RuleContext, result: Plan) -> None:
    """An event named in `cancel_on:` cancels the timer of the record it points to."""
    for cancel in rule.cancel_on:
        if match_trigger(cancel.trigger, ctx.event, ctx.entity):
            continue
        try:
            rendered = render_value(cancel.entity, ctx.template)
            # "task:" — the event names no record (a form answer left empty): nothing to cancel
            named = str(rendered or "").partition(":")[2].strip()
            target = _target(rendered, ctx) if named else None
        except (TemplateProblem, ValueError) as exc:
            result.errors.append((rule.name, f"{rule.where}: cancel_on: {exc}"))
            continue
        if target:
            result.cancels.append((timer_id(rule, cancel.connection, target),
                                   f"{rule.name}: cancelled by {ctx.event.kind}"))


def schedule_timer(rule: Rule, ruleset: RuleSet, now: datetime) -> PlannedTimer:
    """The next tick of a scheduled rule (a digest at 09:00 every working day)."""
    at, working_days = rule.trigger.schedule
    cal = ruleset.calendar_for(rule, rule.trigger.connections[0] if rule.trigger.connections else "")
    fire_at = cal.next_daily(now, at, working_days_only=working_days)
    entity = Entity("schedule", rule.id)
    tick = Event(id=f"schedule:{rule.id}:{fire_at.isoformat()}", connection=(rule.trigger.connections or ("",))[0],
                 source="crmbridge", kind="schedule.tick", entity=entity,
                 data={"scheduled_for": fire_at.isoformat()}, raw={}, occurred_at=fire_at.isoformat())
    return PlannedTimer(rule=rule.name, rule_id=rule.id, timer_id=f"timer:{rule.id}:schedule",
                        fire_at=fire_at.isoformat(), entity={"type": "schedule", "id": rule.id},
                        event=tick.to_dict())


def _maybe_cancel(rule: Rule, ctx: RuleContext, result: Plan) -> None:
    """A delayed rule's entity left the state the rule waits in: its timer goes."""
    if rule.delay is None or not rule.guard or rule.keep_timer:
        return
    if rule.trigger.connections and ctx.event.connection not in rule.trigger.connections:
        return
    if rule.trigger.entity and ctx.event.entity.type != rule.trigger.entity:
        return
    if ctx.event.kind in ("timer.fired",):
        return
    reason = check_all(list(rule.guard), ctx.template)
    if reason:
        result.cancels.append((timer_id(rule, ctx.event.connection, ctx.entity_ref), f"{rule.name}: {reason}"))


def describe_delay(delay: Delay) -> str:
    if delay.cycle:
        fallback = f", else {delay.default}" if delay.default else ""
        return f"after the days in field {delay.cycle!r}{fallback}, on a working day"
    if delay.kind in ("after", "every") and delay.field is None:
        return f"{delay.kind} {delay.duration}" + (f" from now + {' + '.join(map(str, delay.start))}" if delay.start else "")
    if delay.kind == "every":
        starts = "".join(f" + {d}" for d in delay.start)
        return f"every {delay.duration} from field {delay.field!r}{starts}"
    offset = f" {delay.duration}" if delay.duration else ""
    return f"{delay.kind}{offset} field {delay.field!r}"


def fire_time(delay: Delay, ctx: RuleContext, first: bool = False) -> datetime | None:
    """When a delayed rule fires for this event, in the rule's calendar."""
    cal = ctx.calendar
    if delay.cycle:
        return _after_cycle(delay, ctx)
    if delay.kind == "every" and first and (delay.start or delay.field):
        return _first_of_every(delay, ctx)
    if delay.field is None or delay.kind == "every":
        start = ctx.now
        if delay.kind == "every" and delay.duration and delay.duration.working:
            start = cal.next_working_moment(start)
        return max(delay.duration.apply(start, cal, jitter=_jitter(ctx)), ctx.now)
    value = (ctx.entity.get("fields") or {}).get(delay.field)
    if value in (None, "", []):
        return None
    base = field_moment(value, cal, delay.at_time)
    if delay.duration is not None:
        sign = -1 if delay.kind == "before" else 1
        base = delay.duration.apply(base, cal, sign=sign)
    return max(base, ctx.now)


def _first_of_every(delay: Delay, ctx: RuleContext) -> datetime | None:
    """`every: {start: 10 days, …}` or `every: {field: "Decision date", start: [7 days, 5 working days]}`:
    the first firing, moved into working time when the interval is a working one (as every later one)."""
    cal = ctx.calendar
    begin = ctx.now
    if delay.field:
        value = (ctx.entity.get("fields") or {}).get(delay.field)
        if value in (None, "", []):
            return None
        begin = field_moment(value, cal, delay.at_time)
    for step in delay.start:
        begin = step.apply(begin, cal)
    return max(cal.next_working_moment(begin) if delay.duration.working else begin, ctx.now)


def cycle_days(value: Any) -> float | None:
    """The whole days a cycle field holds (30, "30", "45 днів", "1,5" → 2: half up), None when it
    holds no number or one that is no wait (less than half a day)."""
    if isinstance(value, bool) or value in (None, "", []):
        return None
    found = re.search(r"\d+(?:[.,]\d+)?", str(value)) if not isinstance(value, (int, float)) else None
    days = float(value) if isinstance(value, (int, float)) else float(found[0].replace(",", ".")) if found else None
    whole = math.floor(days + 0.5) if days is not None else 0     # whole days, half up
    return float(whole) if whole > 0 else None


def _after_cycle(delay: Delay, ctx: RuleContext) -> datetime | None:
    """`after: {cycle: <field>, default: 30 days, time: "10:00"}` (E3 repeat sales): the number of
    days the record's field holds (a product's buying cycle), else `default`, counted in calendar days
    from now; at `time` on that day in the calendar's zone, or on the first working day from it (a
    Sunday, a holiday), and moved to the next working moment when that time is outside working hours. None: no days and no default."""
    cal = ctx.calendar
    days = cycle_days((ctx.entity.get("fields") or {}).get(delay.cycle))
    wait = Duration(days, "days", False) if days is not None else delay.default
    if wait is None:
        return None
    moment = wait.apply(ctx.now, cal)
    if delay.at_time is not None:   # that time of the day, or of the first working day from it
        day = moment.astimezone(cal.tz).date()
        for _ in range(366):
            if cal.is_working_day(day):
                break
            day += timedelta(days=1)
        moment = datetime.combine(day, delay.at_time, cal.tz)
    return max(cal.next_working_moment(moment), ctx.now)


def _jitter(ctx: RuleContext) -> float:
    """A stable point in a range ("30-60 minutes"): the same event always plans the same time."""
    digest = hashlib.sha1(f"{ctx.event.id}|{ctx.rule.id}".encode()).digest()
    return digest[0] / 255


def field_moment(value: Any, cal: WorkingCalendar, at_time: time | None) -> datetime:
    """A date field's moment for `at:`/`after:`/`before:`/`every:`: `time:` (at_time) sets the time
    of day on the field's date in the calendar's zone, whatever form the date comes in: amoCRM sends
    a date field as a unix timestamp of midnight, others an ISO date. Without `time:` a bare date is
    09:00 and a timestamp or datetime stays as it is."""
    base = to_datetime(value, cal, at_time or time(9, 0))
    if at_time is None:
        return base
    tz = ZoneInfo(cal.timezone)
    return datetime.combine(base.astimezone(tz).date(), at_time, tz)


def to_datetime(value: Any, cal: WorkingCalendar, default_time: time) -> datetime:
    """A field's value (unix timestamp, ISO date or datetime) as an aware datetime."""
    tz = ZoneInfo(cal.timezone)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return datetime.fromtimestamp(float(value), timezone.utc).astimezone(tz)
    text = str(value).strip()
    if len(text) == 10:
        d = date.fromisoformat(text) if "-" in text else datetime.strptime(text, "%d.%m.%Y").date()
        return datetime.combine(d, default_time, tz)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)

