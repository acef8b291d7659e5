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
"""
from __future__ import annotations

import re
from typing import Any, Callable

from rules.templates import TemplateProblem, evaluate

COMPARISONS = ("equals", "not_equals", "in", "gt", "gte", "lt", "lte", "filled", "empty",
               "matches", "starts_with", "contains")
KINDS = ("stage", "not_stage", "pipeline", "field", "filled", "empty", "responsible", "tag",
         "expr", "any", "not")


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


_CHECKS = {"stage": _stage, "not_stage": _not_stage, "pipeline": _pipeline, "field": _field,
           "filled": _filled_fields, "empty": _empty_fields, "responsible": _responsible,
           "tag": _tag, "expr": _expr, "any": _any, "not": _not}


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
    return None
