"""Conditions (`if:`) and guards (`while:`): small checks on the event and the entity.

Each check returns None when it holds, or the reason it does not, in the integrator's words;
the dry run prints that reason as "the first condition that failed".

    if:
      - stage: "Getting the brief"            # the entity is in this stage (name or id; a list = any)
      - not_stage: ["Won", "Lost"]
      - pipeline: Sales
      - field: Budget                         # one field, with one comparison
        gte: 1000                             # equals, not_equals, in, gt, gte, lt, lte,
                                              # filled, empty, matches, starts_with, contains
      - filled: ["First meeting date"]        # all of these fields have a value
      - empty: ["Reason for refusal"]
      - responsible: "Olena Kovalenko"
      - tag: VIP
      - expr: "entity.fields['NPS'] | int <= 6"   # a sandboxed Jinja2 expression
      - any: [ {stage: A}, {stage: B} ]
      - not: {tag: spam}
      - open_tasks: 0                         # open tasks of the entity (see _open_tasks)
      - no_activity: 3 days                   # no calls, messages, notes or stage moves for that long
      - has_file: 'Отчет по проекту "{{ entity.name }}"'   # a file of the entity named so
      - moved: forward                        # the stage change went forward (or backward)
      - parent: [ {pipeline: Sales} ]         # a task's parent record meets these conditions
      - new_deals: 0                          # the client's deals created since the event (E3)
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Callable

from rules.calendar import WorkingCalendar, parse_duration
from rules.templates import TemplateProblem, evaluate, render

COMPARISONS = ("equals", "not_equals", "in", "gt", "gte", "lt", "lte", "filled", "empty",
               "matches", "starts_with", "contains")
KINDS = ("stage", "not_stage", "pipeline", "field", "filled", "empty", "responsible", "tag",
         "expr", "any", "not", "open_tasks", "no_activity", "has_file", "moved", "parent", "new_deals")
TASK_COUNTS = ("count", "equals", "gt", "gte", "lt", "lte")   # open_tasks: {<one of these>: n}
TASK_STAGES = ("current", "previous")


def ref_matches(ref: Any, wanted: Any) -> bool:
    """Does a {"id", "name"} reference match a name or id written in a rule (or a list of them)?"""
    if isinstance(wanted, list):
        return any(ref_matches(ref, w) for w in wanted)
    if not isinstance(ref, dict):
        return False
    text = str(wanted).strip()
    return text == str(ref.get("id")) or text.casefold() == str(ref.get("name") or "").strip().casefold()


def describe(wanted: Any) -> str:
    if isinstance(wanted, list):
        return " or ".join(repr(w) for w in wanted)
    return repr(wanted)


def _shown(ref: Any) -> str:
    if not isinstance(ref, dict):
        return "none"
    return repr(ref.get("name") or ref.get("id"))


def _filled(value: Any) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def check(condition: dict[str, Any], ctx: dict[str, Any]) -> str | None:
    """None if the condition holds for the template context `ctx`, else why not."""
    kind = next((k for k in KINDS if k in condition), None)
    return _CHECKS[kind](condition, ctx)


def check_all(conditions: list[dict[str, Any]], ctx: dict[str, Any]) -> str | None:
    for condition in conditions:
        reason = check(condition, ctx)
        if reason:
            return reason
    return None


def _stage(c: dict, ctx: dict) -> str | None:
    ref = ctx["entity"].get("stage")
    return None if ref_matches(ref, c["stage"]) else f"stage is {_shown(ref)}, not {describe(c['stage'])}"


def _not_stage(c: dict, ctx: dict) -> str | None:
    ref = ctx["entity"].get("stage")
    return f"stage is {_shown(ref)}" if ref_matches(ref, c["not_stage"]) else None


def _pipeline(c: dict, ctx: dict) -> str | None:
    ref = ctx["entity"].get("pipeline")
    return None if ref_matches(ref, c["pipeline"]) else f"pipeline is {_shown(ref)}, not {describe(c['pipeline'])}"


def _responsible(c: dict, ctx: dict) -> str | None:
    ref = ctx["entity"].get("responsible")
    return None if ref_matches(ref, c["responsible"]) else f"responsible is {_shown(ref)}, not {describe(c['responsible'])}"


def _tag(c: dict, ctx: dict) -> str | None:
    tags = [str(t).casefold() for t in ctx["entity"].get("tags") or []]
    return None if str(c["tag"]).casefold() in tags else f"no tag {c['tag']!r}"


def _number(value: Any) -> float | None:
    try:
        return float(str(value).replace(",", ".").replace(" ", ""))
    except (TypeError, ValueError):
        return None


def _compare(op: str, have: Any, want: Any) -> bool:
    if op in ("gt", "gte", "lt", "lte"):
        a, b = _number(have), _number(want)
        if a is None or b is None:
            return False
        return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]
    ops: dict[str, Callable[[], bool]] = {
        "equals": lambda: str(have) == str(want),
        "not_equals": lambda: str(have) != str(want),
        "in": lambda: str(have) in [str(w) for w in want],
        "filled": lambda: _filled(have) == bool(want),
        "empty": lambda: (not _filled(have)) == bool(want),
        "matches": lambda: have is not None and re.search(str(want), str(have)) is not None,
        "starts_with": lambda: str(have or "").casefold().startswith(str(want).casefold()),
        "contains": lambda: str(want).casefold() in str(have or "").casefold(),
    }
    return ops[op]()


def _field(c: dict, ctx: dict) -> str | None:
    name = c["field"]
    have = (ctx["entity"].get("fields") or {}).get(name)
    for op in COMPARISONS:
        if op in c and not _compare(op, have, c[op]):
            return f"field {name!r} is {have!r}; expected {op.replace('_', ' ')} {c[op]!r}"
    return None


def _filled_fields(c: dict, ctx: dict) -> str | None:
    fields = ctx["entity"].get("fields") or {}
    missing = [n for n in c["filled"] if not _filled(fields.get(n))]
    return f"not filled: {', '.join(missing)}" if missing else None


def _empty_fields(c: dict, ctx: dict) -> str | None:
    fields = ctx["entity"].get("fields") or {}
    present = [n for n in c["empty"] if _filled(fields.get(n))]
    return f"filled: {', '.join(present)}" if present else None


def _expr(c: dict, ctx: dict) -> str | None:
    try:
        return None if evaluate(c["expr"], ctx) else f"{c['expr']} is false"
    except TemplateProblem as exc:
        return f"{c['expr']}: {exc}"


def _any(c: dict, ctx: dict) -> str | None:
    reasons = [check(sub, ctx) for sub in c["any"]]
    return None if any(r is None for r in reasons) else "none of: " + "; ".join(reasons)


def _not(c: dict, ctx: dict) -> str | None:
    return "the negated condition holds" if check(c["not"], ctx) is None else None


def name_matches(name: Any, pattern: Any) -> bool:
    """A file name against a pattern, without regard to case: `*` stands for any text, and a
    name matches with or without its extension (`Отчет по проекту "Весна"` matches
    `Отчет по проекту "Весна".pdf`, not `Отчет по проекту "Весна 2"`)."""
    text = str(name or "").strip()
    stem = text.rsplit(".", 1)[0] if "." in text else text
    return wildcard_matches(text, pattern) or wildcard_matches(stem, pattern)


def wildcard_matches(text: Any, pattern: Any) -> bool:
    """The whole text against a pattern where `*` stands for any text, without regard to case."""
    regex = ".*".join(re.escape(part) for part in str(pattern).strip().casefold().split("*"))
    return re.fullmatch(regex, str(text or "").strip().casefold(), re.DOTALL) is not None


def _moment(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _open_tasks(c: dict, ctx: dict) -> str | None:
    """`open_tasks: 0`, or `{count|equals|gt|gte|lt|lte: n, stage: current|previous, text: regex}`.

    Needs the entity's open tasks (the worker reads them when a rule uses this condition).
    `stage: current` counts the tasks created since the entity entered its current stage,
    `previous` those created before (what is left of earlier stages)."""
    spec = c["open_tasks"] if isinstance(c["open_tasks"], dict) else {"count": c["open_tasks"]}
    entity = ctx["entity"]
    tasks = entity.get("tasks")
    if tasks is None:
        return "the entity's tasks were not read"
    found = [t for t in tasks if not t.get("completed")]
    if spec.get("text"):
        found = [t for t in found if re.search(str(spec["text"]), str(t.get("text", "")), re.IGNORECASE)]
    since = _moment(entity.get("stage_since"))
    if spec.get("stage") and since is not None:
        current = spec["stage"] == "current"
        found = [t for t in found if ((_moment(t.get("created_at")) or since) >= since) == current]
    elif spec.get("stage") == "previous":  # when it entered the stage is unknown: nothing is older
        found = []
    op = next(k for k in TASK_COUNTS if k in spec)
    if _compare("equals" if op == "count" else op, len(found), spec[op]):
        return None
    where = f" of the {spec['stage']} stage" if spec.get("stage") else ""
    names = "; ".join(str(t.get("text", "")) for t in found[:5])
    return (f"{len(found)} open task(s){where}{': ' + names if names else ''}; "
            f"expected {op.replace('count', 'equals')} {spec[op]}")


def _no_activity(c: dict, ctx: dict) -> str | None:
    """No calls, messages, notes or stage moves (`entity.last_activity`) for that long."""
    entity = ctx["entity"]
    if "last_activity" not in entity:
        return "the entity's activity was not read"
    last = _moment(entity.get("last_activity"))
    if last is None:
        return None
    duration = parse_duration(str(c["no_activity"]))
    calendar = ctx.get("calendar") if isinstance(ctx.get("calendar"), WorkingCalendar) else WorkingCalendar()
    quiet_until = duration.apply(last, calendar)
    if ctx["now"] >= quiet_until:
        return None
    return f"activity at {last.isoformat()}, less than {c['no_activity']} ago"


def _has_file(c: dict, ctx: dict) -> str | None:
    files = ctx["entity"].get("files")
    if files is None:
        return "the entity's files were not read"
    patterns = c["has_file"] if isinstance(c["has_file"], list) else [c["has_file"]]
    try:
        wanted = [render(str(p), ctx) for p in patterns]
    except TemplateProblem as exc:
        return f"has_file: {exc}"
    names = [f.get("name") if isinstance(f, dict) else f for f in files]
    if any(name_matches(n, w) for n in names for w in wanted):
        return None
    return f"no file named {describe(wanted if len(wanted) > 1 else wanted[0])}"


def _moved(c: dict, ctx: dict) -> str | None:
    entity = ctx["entity"]
    now, before = entity.get("stage") or {}, entity.get("previous_stage") or {}
    if not before:
        return "the stage did not change"
    old_pipeline = (entity.get("previous_pipeline") or {}).get("id")
    if old_pipeline and old_pipeline != (entity.get("pipeline") or {}).get("id"):
        return "moved to another pipeline"
    if now.get("position") is None or before.get("position") is None:
        return "the order of the stages is not known"
    went = "forward" if now["position"] > before["position"] else (
        "backward" if now["position"] < before["position"] else "nowhere")
    return None if went == c["moved"] else f"moved {went}, from {_shown(before)} to {_shown(now)}"


def _new_deals(c: dict, ctx: dict) -> str | None:
    """`new_deals: 0`, or `{count|equals|gt|gte|lt|lte: n, since: <moment>}`: the deals of the
    record's client (every contact linked to it), other than the record itself, created at or after
    `since` (a template; default the event's moment: for a timer, when it was set). Needs
    `entity.client_deals` (the worker reads them when a rule uses this condition): E3, a repeat-sale
    offer left alone when the client came back by themselves meanwhile."""
    spec = c["new_deals"] if isinstance(c["new_deals"], dict) else {"count": c["new_deals"]}
    entity = ctx["entity"]
    deals = entity.get("client_deals")
    if deals is None:
        return "the client's deals were not read"
    try:
        since = _moment(render(str(spec["since"]), ctx)) if spec.get("since") else _moment(
            (ctx.get("event") or {}).get("occurred_at"))
    except (TemplateProblem, ValueError) as exc:
        return f"new_deals → since: {exc}"
    own = str(entity.get("id"))
    found = [d for d in deals if str(d.get("id")) != own
             and (since is None or (_moment(d.get("created")) or since) >= since)]
    op = next(k for k in TASK_COUNTS if k in spec)
    if _compare("equals" if op == "count" else op, len(found), spec[op]):
        return None
    names = "; ".join(f"{d.get('name') or ''} ({d.get('id')})".strip() for d in found[:5])
    after = f" since {since.isoformat()}" if since else ""
    return (f"{len(found)} new deal(s) of the client{after}{': ' + names if names else ''}; "
            f"expected {op.replace('count', 'equals')} {spec[op]}")


def _parent(c: dict, ctx: dict) -> str | None:
    parent = ctx["entity"].get("parent")
    if not isinstance(parent, dict) or len(parent) <= 2:  # only {type, id}: not read
        return "the parent record was not read"
    reason = check_all(c["parent"], {**ctx, "entity": parent})
    return f"parent {parent.get('type')} {parent.get('id')}: {reason}" if reason else None


_CHECKS = {"stage": _stage, "not_stage": _not_stage, "pipeline": _pipeline, "field": _field,
           "filled": _filled_fields, "empty": _empty_fields, "responsible": _responsible,
           "tag": _tag, "expr": _expr, "any": _any, "not": _not, "open_tasks": _open_tasks,
           "no_activity": _no_activity, "has_file": _has_file, "moved": _moved, "parent": _parent,
           "new_deals": _new_deals}


def validate(condition: Any) -> str | None:
    """A problem with a condition's shape, in integrator terms, or None."""
    if not isinstance(condition, dict):
        return f"expected a condition such as {{stage: \"…\"}}, found {condition!r}"
    kind = next((k for k in KINDS if k in condition), None)
    if kind is None:
        return f"unknown condition {sorted(condition)!r}; expected one of: {', '.join(KINDS)}"
    if kind == "field":
        ops = [k for k in condition if k != "field"]
        bad = [k for k in ops if k not in COMPARISONS]
        if bad or not ops:
            return (f"field {condition['field']!r}: expected one comparison of: {', '.join(COMPARISONS)}, "
                    f"found {ops!r}")
    elif len(condition) != 1:
        return f"expected one key per condition, found {sorted(condition)!r}"
    if kind in ("filled", "empty") and not isinstance(condition[kind], list):
        return f"{kind}: expected a list of field names, found {condition[kind]!r}"
    if kind == "any":
        if not isinstance(condition["any"], list):
            return f"any: expected a list of conditions, found {condition['any']!r}"
        return next((p for p in map(validate, condition["any"]) if p), None)
    if kind == "not":
        return validate(condition["not"])
    if kind == "parent":
        if not isinstance(condition["parent"], list):
            return f"parent: expected a list of conditions, found {condition['parent']!r}"
        return next((p for p in map(validate, condition["parent"]) if p), None)
    return _validate_new(kind, condition[kind])


def _validate_new(kind: str, value: Any) -> str | None:
    if kind == "open_tasks":
        spec = value if isinstance(value, dict) else {"count": value}
        counts = [k for k in spec if k in TASK_COUNTS]
        extra = sorted(set(spec) - set(TASK_COUNTS) - {"stage", "text"})
        if extra or len(counts) != 1 or not isinstance(spec[counts[0]], int) or isinstance(spec[counts[0]], bool):
            return ("open_tasks: expected a number, or {count|gt|gte|lt|lte: <number>, stage: current|previous, "
                    f"text: <regex>}}, found {value!r}")
        if spec.get("stage") not in (None, *TASK_STAGES):
            return f"open_tasks → stage: expected current or previous, found {spec['stage']!r}"
    if kind == "new_deals":
        spec = value if isinstance(value, dict) else {"count": value}
        counts = [k for k in spec if k in TASK_COUNTS]
        extra = sorted(set(spec) - set(TASK_COUNTS) - {"since"})
        if extra or len(counts) != 1 or not isinstance(spec[counts[0]], int) or isinstance(spec[counts[0]], bool):
            return ("new_deals: expected a number, or {count|gt|gte|lt|lte: <number>, since: <moment>}, "
                    f"found {value!r}")
    if kind == "no_activity":
        try:
            parse_duration(str(value))
        except ValueError as exc:
            return f"no_activity: {exc}"
    if kind == "has_file" and not (isinstance(value, str) or isinstance(value, list) and value
                                   and all(isinstance(v, str) for v in value)):
        return f"has_file: expected a file name pattern or a list of them, found {value!r}"
    if kind == "moved" and value not in ("forward", "backward"):
        return f"moved: expected forward or backward, found {value!r}"
    return None
