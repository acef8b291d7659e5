r"""Message templates: Jinja2 in its sandbox, so a rule file cannot reach Python internals.

Jinja2 3.1.6 or later is required: earlier versions have known sandbox escapes.

A value a template inserts (`{{ … }}`) that is None renders as empty text, never "None". When an
action's options say `parse_mode: HTML` or `MarkdownV2` (send_message, ask_approval), its `text` is
rendered so that every inserted value is escaped for that mode while the template's own text, its
markup included, stays as written: a task named `<a href="https://evil.example/pay">` arrives as that
text, not as a link, and a `<script>` cannot make Telegram refuse the message ("can't parse entities").
- HTML: Jinja's autoescape (markupsafe: & < > " ' as entities; the Bot API's HTML style takes &lt; &gt;
  &amp; &quot; and "all numerical HTML entities"). `{{ x | safe }}` opts out, for markup a rule builds.
- MarkdownV2: a backslash before each of _ * [ ] ( ) ~ ` > # + - = | { } . ! and \ ("Any character with
  code between 1 and 126 inclusively can be escaped anywhere with a preceding '\' character";
  core.telegram.org/bots/api#markdownv2-style), so the value is plain text wherever it lands.
Legacy `Markdown` is not offered: inside its entities nothing can be escaped.
"""
from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, TemplateError, pass_context
from markupsafe import Markup
from marshmallow import ValidationError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rules.calendar import WorkingCalendar


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


def _plain(value: Any) -> Any:
    """finalize: None (a field the record does not have filled) renders as empty text."""
    return "" if value is None else value


MARKDOWN_V2_SPECIAL = re.compile(r"([_*\[\]()~`>#+\-=|{}.!\\])")


def escape_markdown_v2(text: Any) -> str:
    """Text as MarkdownV2 shows it literally: a backslash before each character the style reserves."""
    return MARKDOWN_V2_SPECIAL.sub(r"\\\1", str(text))


def _markdown_v2(value: Any) -> Any:
    if value is None:
        return ""
    return str(value) if isinstance(value, Markup) else escape_markdown_v2(value)


PARSE_MODES = ("HTML", "MarkdownV2")   # Telegram's names; matched in any case


def parse_mode(value: Any) -> str | None:
    """The Telegram parse mode an option names (any case), or None when it names none we escape for."""
    text = str(value or "").strip().lower()
    return next((m for m in PARSE_MODES if m.lower() == text), None)


def known_parse_mode(value: Any) -> None:
    """marshmallow validator of an action's `parse_mode` option (a template is checked after rendering)."""
    if value is not None and not is_template(value) and parse_mode(value) is None:
        raise ValidationError(f"expected one of {', '.join(PARSE_MODES)} (any case), found {value!r}; "
                              "legacy Markdown is not offered: values cannot be escaped inside its entities")


def _environment(**kwargs: Any) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, **kwargs)
    env.filters["field_groups"] = field_groups
    return env


ENV = _environment(autoescape=False, finalize=_plain)
ENVS = {None: ENV, "HTML": _environment(autoescape=True, finalize=_plain),
        "MarkdownV2": _environment(autoescape=False, finalize=_markdown_v2)}


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


def _moment(value: Any, name: str) -> datetime:
    when = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise TemplateProblem(f"working_seconds: {name}: expected a timezone-aware datetime or ISO text, got {value!r}")
    return when


@pass_context
def working_seconds(context: Any, start: Any, end: Any, calendar: Any = None) -> int:
    """`{{ working_seconds(data.asked_at, event.occurred_at) }}`: the whole seconds of working time
    from start to end in the rule's calendar (or the calendar given): with hours to 19:00, 18:59 to
    10:02 the next working day is 180. Negative when end is before start."""
    cal = calendar if calendar is not None else context.get("calendar")
    if not isinstance(cal, WorkingCalendar):
        raise TemplateProblem(f"working_seconds: expected the rule's calendar, got {cal!r}")
    return int(cal.working_time_between(_moment(start, "from"), _moment(end, "to")).total_seconds())


for _env in ENVS.values():
    _env.filters["in_zone"] = in_zone
    _env.globals["working_seconds"] = working_seconds


def is_template(value: Any) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


@lru_cache(maxsize=4096)
def compile_template(source: str, mode: str | None = None):
    """Compile once (per parse mode); a syntax error says what Jinja2 found and on which template line."""
    try:
        return ENVS[mode].from_string(source)
    except TemplateError as exc:
        line = f" (template line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise TemplateProblem(f"template error{line}: {exc.message}") from None


def render(source: str, context: dict[str, Any], mode: str | None = None) -> str:
    """Render a template string, its inserted values escaped for `mode` (HTML, MarkdownV2 or None);
    plain strings pass through untouched."""
    if not is_template(source):
        return source
    try:
        return str(compile_template(source, mode).render(context))
    except TemplateProblem:
        raise
    except Exception as exc:  # the sandbox's SecurityError, undefined names, type errors…
        raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}") from None


ESCAPED_OPTIONS = ("text",)   # the options Telegram parses with the action's parse_mode


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render every template inside a nested option value. An action whose options name a
    `parse_mode` gets its `text` rendered with every inserted value escaped for that mode."""
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, dict):
        rendered = {k: render_value(v, context) for k, v in value.items() if k not in ESCAPED_OPTIONS}
        mode = parse_mode(rendered.get("parse_mode"))
        if mode is not None:
            rendered["parse_mode"] = mode
        for key in ESCAPED_OPTIONS:
            if key in value:
                rendered[key] = (render(value[key], context, mode) if isinstance(value[key], str)
                                 else render_value(value[key], context))
        return {k: rendered[k] for k in value}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def check_syntax(value: Any) -> None:
    """Compile every template inside an option value (used at start-up)."""
    if isinstance(value, str):
        if is_template(value):
            compile_template(value)
            compile_template(value, "HTML")   # autoescape compiles differently: check both
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
           "check_expression", "is_template", "escape_markdown_v2", "parse_mode", "PARSE_MODES"]
