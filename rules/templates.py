"""Message templates: Jinja2 in its sandbox, so a rule file cannot reach Python internals.

Jinja2 3.1.6 or later is required: earlier versions have known sandbox escapes.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                                   keep_trailing_newline=False)


class TemplateProblem(ValueError):
    """A template could not be compiled or rendered."""


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
