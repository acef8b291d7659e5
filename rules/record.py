"""Record a fact for reports: a metric's number, with the dimensions reports group it by.

    do:
      - record: inquiries                      # the metric alone: the value 1 (a count)
      - record:
          metric: revenue                      # a plain name (letters, digits, _ . -): reports name it
          value: "{{ entity.price }}"          # a number, usually a template (1 when left out);
                                               # "150 000,50" reads as 150000.5
          dimensions:                          # texts to group by; each name letters, digits and _
            manager: "{{ entity.responsible.name }}"
            pipeline: "{{ entity.pipeline.name }}"
            source: "{{ entity.fields['Джерело'] }}"
          at: "{{ entity.fields['Дата оплати'] }}"   # the fact's moment: default the event's

The fact goes to the decision history's database (PostgreSQL when DATABASE_URL is set, else the
SQLite file) with its moment, dated in the rule calendar's zone (a report's day is the
calendar's day, not UTC's). It is recorded once per event, rule and action: a repeated webhook or
a re-run job adds nothing. A value that is not a number (an empty field) stops this action with a
rule error naming the rule file's line: write `{{ entity.price or 0 }}` to count an empty field
as 0. Reports (config/reports.yaml, docs/reports.md) add up, count or average the facts.
"""
import math
import re
from datetime import datetime

from marshmallow import Schema, ValidationError, fields, validate

NAME = "record"
SHORTHAND = "metric"
METRIC = re.compile(r"^[\w.-]+$")
DIMENSION = re.compile(r"^[^\W\d]\w*$")
RESERVED = ("day", "month")   # the time dimensions every fact has (reports: `by: day`)


def number(value) -> float:
    """A value as the number it writes: 12, 12.5, "12,5", "150 000", "1,500.50" (ValueError if none)."""
    if isinstance(value, bool):
        raise ValueError(f"value: expected a number, found {value!r}")
    if isinstance(value, (int, float)):
        result = float(value)
    else:
        text = re.sub(r"[\s\u00a0\u202f']", "", str(value if value is not None else ""))
        text = text.replace(",", "") if "," in text and "." in text else text.replace(",", ".")
        try:
            result = float(text)
        except ValueError:
            raise ValueError(f"value: expected a number, found {value!r}") from None
    if not math.isfinite(result):
        raise ValueError(f"value: expected a finite number, found {value!r}")
    return result


def _numeric(value) -> None:
    try:
        number(value)
    except ValueError as exc:
        raise ValidationError(str(exc).partition(": ")[2]) from None


def _dimension_names(value) -> None:
    for name in value:
        if not isinstance(name, str) or not DIMENSION.match(name):
            raise ValidationError(f"dimension {name!r}: expected a name of letters, digits and _")
        if name in RESERVED:
            raise ValidationError(f"dimension {name!r}: {', '.join(RESERVED)} are every fact's own dates")


class Options(Schema):
    metric = fields.String(required=True, validate=validate.Regexp(METRIC),
                           metadata={"expected": "a plain metric name (letters, digits, _ . -)"})
    value = fields.Raw(load_default=1, validate=_numeric, metadata={"expected": "a number"})
    dimensions = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), load_default=dict,
                             validate=_dimension_names, metadata={"expected": "a mapping of dimension names (letters, digits and _; "
                                                             "not day or month) to texts"})
    at = fields.Raw(load_default=None, metadata={"expected": "a date or date and time"})


def plan(ctx, options: dict) -> list:
    if options["at"] not in (None, ""):
        when = ctx.moment(options["at"])
    elif ctx.event.occurred_at:
        when = datetime.fromisoformat(ctx.event.occurred_at.replace("Z", "+00:00"))
    else:
        when = ctx.now
    bound = ctx.event.data.get("record") if isinstance(ctx.event.data, dict) else None
    record = (f"{bound['type']}:{bound['id']}" if isinstance(bound, dict) and bound.get("type") and bound.get("id")
              else str(ctx.event.entity))
    dimensions = {k: "" if v is None else str(v) for k, v in options["dimensions"].items()}
    # the step (pipeline/steps/record.py) stores it under its own key: event id | rule | action index
    return [ctx.step("record", None, metric=options["metric"], value=number(options["value"]),
                     dimensions=dimensions, at=when.isoformat(), zone=ctx.calendar.timezone,
                     rule=ctx.rule.name, event_id=ctx.event.id, record=record)]
