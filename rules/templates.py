"""Message templates: Jinja2 in its sandbox, so a rule file cannot reach Python internals.

Jinja2 3.1.6 or later is required: earlier versions have known sandbox escapes.
"""
from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateProblem(ValueError):
    """A template could not be compiled or rendered."""


def field_groups(fields: Any, names: Any) -> list[dict[str, Any]]:
    """Numbered fields as a list, for `for_each` over a repeatable group of fields.

    `entity.fields | field_groups({'blogger': 'ФИО блогера {i}', 'service': 'Услуга {i}.{j}',
    'platform': 'Площадка {i}.{j}'})` gives one item per filled (i, j): {"blogger", "service",
    "platform", "i", "j"}; without `{j}` in any name, one item per filled i. Only filled
    values count (amoCRM leaves empty fields out), in the order of i, then j."""
    if not isinstance(fields, dict) or not isinstance(names, dict) or not names:
        raise TemplateProblem("field_groups: expected entity.fields | field_groups({key: 'Field {i}', …})")
    patterns = {key: re.compile(re.escape(str(name)).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)"))
                for key, name in names.items()}
    inner = {key for key, name in names.items() if "{j}" in str(name)}
    values: dict[tuple[str, int, int], Any] = {}
    for field, value in fields.items():
        for key, pattern in patterns.items():
            m = pattern.fullmatch(str(field))
            if m and value not in (None, "", [], {}):
                values[(key, int(m["i"]) if "i" in m.re.groupindex else 0,
                        int(m["j"]) if "j" in m.re.groupindex else 0)] = value
    items = []
    for i in sorted({i for _, i, _ in values}):
        base = {key: values.get((key, i, 0)) for key in names if key not in inner}
        js = sorted({j for key, ii, j in values if ii == i and key in inner})
        if not inner:
            items.append({**base, "i": i})
        for j in js:
            items.append({**base, **{key: values.get((key, i, j)) for key in inner}, "i": i, "j": j})
    return items


ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                   keep_trailing_newline=False)
ENV.filters["field_groups"] = field_groups


def in_zone(moment: Any, zone: str) -> datetime:
    """`{{ (now | in_zone('Europe/Kyiv')).date() }}`: a datetime (or ISO text) in a time zone, so a
    date written to a field is the local day, not UTC's (23:30 in Kyiv is already tomorrow)."""
    when = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise TemplateProblem(f"in_zone: expected a timezone-aware datetime or ISO text, got {moment!r}")
    try:
        return when.astimezone(ZoneInfo(str(zone)))
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateProblem(f"in_zone: {zone!r} is not a time zone such as 'Europe/Kyiv'") from None


ENV.filters["in_zone"] = in_zone


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@lru_cache(maxsize=4096)
def compile_template(source: str):
    """Compile once; a syntax error says what Jinja2 found and on which template line."""
    try:
        return ENV.from_string(source)
    except TemplateError as exc:
        line = f" (template line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise TemplateProblem(f"template error{line}: {exc.message}") from None


def render(source: str, context: dict[str, Any]) -> str:
    """Render a template string; plain strings pass through untouched."""
    if not is_template(source):
        return source
    try:
        return compile_template(source).render(context)
    except TemplateProblem:
        raise
    except Exception as exc:  # the sandbox's SecurityError, undefined names, type errors…
        raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}") from None


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render every template inside a nested option value."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def check_syntax(value: Any) -> None:
    """Compile every template inside an option value (used at start-up)."""
    if isinstance(value, str):
        if is_template(value):
            compile_template(value)
    elif isinstance(value, dict):
        for v in value.values():
            check_syntax(v)
    elif isinstance(value, list):
        for v in value:
            check_syntax(v)


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    """Evaluate a sandboxed Jinja2 expression such as `entity.fields['NPS'] <= 6`."""
    try:
        return ENV.compile_expression(expression, undefined_to_none=False)(**context)
    except TemplateError as exc:
        raise TemplateProblem(f"expression error: {exc.message}") from None
    except Exception as exc:
        raise TemplateProblem(f"expression error: {type(exc).__name__}: {exc}") from None


def check_expression(expression: str) -> None:
    try:
        ENV.compile_expression(expression)
    except TemplateError as exc:
        raise TemplateProblem(f"expression error: {exc.message}") from None


__all__ = ["TemplateProblem", "render", "render_value", "check_syntax", "evaluate",
           "check_expression", "is_template"]
