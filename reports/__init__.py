"""Reports for a BI tool: the `record` action's facts, added up as `reports.yaml` names them.

    reports:
      revenue_by_manager:
        title: "Виручка по менеджерах"        # optional, shown in JSON
        metric: revenue                       # a metric some rule records (a list: one column each)
        aggregate: sum                        # sum (default) | count | avg | min | max | p50, p90, pNN
        by: [month, manager]                  # default grouping: day, month, or recorded dimensions
        where: {source: "Інстаграм"}          # optional: only the facts with these dimension values
        plan: {metric: revenue_plan, aggregate: max}   # optional: plan vs fact

The file is `reports.yaml` in the configuration directory (none: no reports). It is checked at
start-up against the rules: a metric no `record` action records, a dimension no `record` action
of that metric gives, or a plan metric without the report's dimensions is an error with file:line
and "did you mean". `GET /reports/<name>` (reports/web.py) and `cli.py report NAME` answer the same
text (`answer`). Days are each fact's date in its rule calendar's zone; `from` and `to` are both
included. `pNN` is the NN-th percentile of the group's values (p50 the median, p90: nine in ten
are at most this), interpolated as PostgreSQL's percentile_cont, on SQLite too.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from config.loader import ConfigError, ConfigErrors, line_of, load_yaml
from pipeline import history
from rules import find_or_create

AGGREGATES = tuple(history.AGGREGATES)   # sum, count, avg, min, max; and percentiles, pNN
SHOWN_AGGREGATES = ", ".join(AGGREGATES) + " or a percentile such as p50, p90"
PERIODS = tuple(history.PERIODS)         # day, month: every fact's own dates
FORMATS = ("json", "csv")
KEYS = ("title", "metric", "aggregate", "by", "where", "plan")
FILE = "reports.yaml"


class BadRequest(ValueError):
    """A report asked for with a wrong parameter (HTTP 400, a usage error in the CLI)."""


@dataclass(frozen=True)
class Plan:
    metric: str
    aggregate: str = "sum"


@dataclass(frozen=True)
class Report:
    name: str
    metrics: tuple[str, ...]
    aggregate: str
    by: tuple[str, ...]
    title: str
    plan: Plan | None
    line: int
    where: tuple[tuple[str, str], ...] = ()   # (dimension, value): only the facts that have it


def recorded(rules: list) -> dict[str, set[str]]:
    """Every metric the rules' `record` actions record → the dimensions they give it."""
    found: dict[str, set[str]] = {}
    for rule in rules:
        for spec in (*rule.actions, *rule.otherwise):
            if spec.verb == "record" and isinstance(spec.options, dict) and spec.options.get("metric"):
                dims = spec.options.get("dimensions")
                found.setdefault(str(spec.options["metric"]), set()).update(dims if isinstance(dims, dict) else ())
    for metric, dims in find_or_create.recorded_metrics(rules).items():   # an order's answer times
        found.setdefault(metric, set()).update(dims)
    return found


def known_aggregate(name: Any) -> bool:
    """sum, count, avg, min, max, or a percentile p1 … p99 (p99.9: decimals allowed)."""
    return name in AGGREGATES or history.percentile(str(name)) is not None


def _hint(found: str, known: list[str]) -> str:
    close = difflib.get_close_matches(found, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load(config_dir: Path, rules: list) -> dict[str, Report]:
    """The reports of `config_dir/reports.yaml` ({} without the file); ConfigErrors listing every
    mistake with its line."""
    path = Path(config_dir) / FILE
    if not path.exists():
        return {}
    shown = str(path)
    data = load_yaml(path, shown)
    errors: list[ConfigError] = []

    def err(node: Any, key: Any, message: str) -> None:
        errors.append(ConfigError(shown, line_of(node, key, default=1), message))

    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("reports"), dict):
        raise ConfigErrors([ConfigError(shown, line_of(data, default=1),
                                        "expected `reports:` with a mapping of report names, found "
                                        f"{type(data).__name__ if not isinstance(data, dict) else data.get('reports')!r}")])
    metrics = recorded(rules)
    known = sorted(metrics)
    shown_known = ", ".join(known) or "none (no rule has a `record` action)"
    reports: dict[str, Report] = {}
    items = data["reports"]
    for name, spec in items.items():
        where = f'report "{name}"'
        if not isinstance(spec, dict):
            err(items, name, f"{where}: expected a mapping with metric:, found {spec!r}")
            continue
        unknown = sorted(set(spec) - set(KEYS))
        for key in unknown:
            err(spec, key, f"{where}: unknown key {key!r}; expected {', '.join(KEYS)}" + _hint(str(key), list(KEYS)))
        names = spec.get("metric")
        names = names if isinstance(names, list) else [names] if names else []
        if not names or not all(isinstance(n, str) for n in names):
            err(spec, "metric" if "metric" in spec else None, f"{where} → metric: expected a metric name (or a list), "
                f"found {spec.get('metric')!r}; recorded: {shown_known}")
            continue
        bad = False
        for metric in names:
            if metric not in metrics:
                err(spec, "metric", f"{where} → metric: no rule records {metric!r}; recorded: {shown_known}"
                    + _hint(metric, known))
                bad = True
        named = not bad   # the metrics are known: their dimensions can be checked, whatever else is wrong
        aggregate = spec.get("aggregate", "sum")
        if not known_aggregate(aggregate):
            err(spec, "aggregate", f"{where} → aggregate: expected one of {SHOWN_AGGREGATES}, found {aggregate!r}"
                + ("; did you mean 'p50'?" if str(aggregate).lower() == "median"
                   else _hint(str(aggregate), [*AGGREGATES, "p50", "p90"])))
            bad = True
        by = spec.get("by", [])
        by = by if isinstance(by, list) else [by]
        dims = set(PERIODS).union(*(metrics.get(m, set()) for m in names)) if named else set()
        for dim in by if named else []:
            if dim not in dims:
                err(spec, "by", f"{where} → by: unknown dimension {dim!r}; {', '.join(names)} can be grouped by "
                    f"{', '.join(sorted(dims))}" + _hint(str(dim), sorted(dims)))
                bad = True
        only, wrong = _where(spec, where, names, dims, err, not named)
        bad = bad or wrong
        plan = None
        if spec.get("plan") is not None and not bad:   # its dimensions are checked against a valid `by`
            plan, bad = _plan(spec, where, names, [*by, *(k for k, _ in only)], metrics, known, shown_known, err, bad)
        if not bad:
            reports[str(name)] = Report(str(name), tuple(names), aggregate, tuple(str(b) for b in by),
                                        str(spec.get("title") or name), plan, line_of(items, name), only)
    if errors:
        raise ConfigErrors(errors)
    return reports


def _where(spec: dict, where: str, names: list[str], dims: set[str], err: Any,
           bad: bool) -> tuple[tuple[tuple[str, str], ...], bool]:
    """`where: {dimension: value}`: recorded dimensions (not day or month) and text values."""
    raw = spec.get("where")
    if raw is None or bad:
        return (), bad
    if not isinstance(raw, dict) or not raw:
        err(spec, "where", f"{where} → where: expected a mapping of dimension to value such as {{reply: first}}, "
            f"found {raw!r}")
        return (), True
    for dim, value in raw.items():
        if dim in PERIODS or dim not in dims:
            err(raw, dim, f"{where} → where: unknown dimension {dim!r}; {', '.join(names)} can be filtered by "
                f"{', '.join(sorted(dims - set(PERIODS))) or 'nothing (no dimensions recorded)'}"
                + ("; use from/to for days" if dim in PERIODS else _hint(str(dim), sorted(dims - set(PERIODS)))))
            bad = True
        elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
            err(raw, dim, f"{where} → where → {dim}: expected a text value, found {value!r}")
            bad = True
    return tuple(sorted((str(k), str(v)) for k, v in raw.items())), bad


def _plan(spec: dict, where: str, names: list[str], by: list, metrics: dict[str, set[str]], known: list[str],
          shown_known: str, err: Any, bad: bool) -> tuple[Plan | None, bool]:
    raw = spec["plan"]
    raw = {"metric": raw} if isinstance(raw, str) else raw
    if not isinstance(raw, dict) or not isinstance(raw.get("metric"), str):
        err(spec, "plan", f"{where} → plan: expected {{metric: …, aggregate: …}}, found {spec['plan']!r}")
        return None, True
    if len(names) != 1:
        err(spec, "plan", f"{where} → plan: a plan compares with one metric, found {len(names)}")
        return None, True
    metric, aggregate = raw["metric"], raw.get("aggregate", "sum")
    if metric not in metrics:
        err(spec, "plan", f"{where} → plan → metric: no rule records {metric!r}; recorded: {shown_known}"
            + _hint(metric, known))
        return None, True
    if not known_aggregate(aggregate):
        err(spec, "plan", f"{where} → plan → aggregate: expected one of {SHOWN_AGGREGATES}, found {aggregate!r}")
        return None, True
    lacking = [d for d in by if d not in PERIODS and d not in metrics[metric]]
    if lacking:
        err(spec, "plan", f"{where} → plan: the plan {metric!r} is not recorded by {', '.join(map(repr, lacking))}, "
            "which the report groups by: record it with those dimensions or group by fewer")
        return None, True
    return Plan(metric, aggregate), bad


def check(config_dir: Path, rules: list) -> list[ConfigError]:
    """Start-up check (runtime.load_configuration): the reports' mistakes, as errors."""
    try:
        load(config_dir, rules)
    except ConfigErrors as exc:
        return list(exc.errors)
    return []


# --- answering ------------------------------------------------------------------------------------

def _day(text: str | None, name: str, default: date) -> date:
    if text in (None, ""):
        return default
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: expected a date YYYY-MM-DD, found {text!r}") from None


def parameters(report: Report, rules: list, args: dict[str, Any], today: date) -> tuple[date, date, tuple[str, ...], str]:
    """(from, to, by, format) from a request's or the command line's values; BadRequest if wrong.
    Defaults: `to` today, `from` the first day of `to`'s month, `by` the report's, format json."""
    last = _day(args.get("to"), "to", today)
    first = _day(args.get("from"), "from", last.replace(day=1))
    if first > last:
        raise BadRequest(f"from {first} is after to {last}")
    by = report.by
    if args.get("by") is not None:
        by = tuple(b.strip() for b in str(args["by"]).split(",") if b.strip())
    metrics = recorded(rules)
    dims = sorted(set(PERIODS).union(*(metrics.get(m, set()) for m in report.metrics)))
    for dim in by:
        if dim not in dims:
            raise BadRequest(f"by: unknown dimension {dim!r}; expected some of {', '.join(dims)}" + _hint(dim, dims))
        if report.plan and dim not in PERIODS and dim not in metrics.get(report.plan.metric, set()):
            raise BadRequest(f"by: the plan {report.plan.metric!r} has no dimension {dim!r}")
    if len(set(by)) != len(by):
        raise BadRequest(f"by: a dimension named twice in {','.join(by)!r}")
    fmt = str(args.get("format") or "json").lower()
    if fmt not in FORMATS:
        raise BadRequest(f"format: expected json or csv, found {fmt!r}")
    return first, last, by, fmt


def _number(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return int(value) if value.is_integer() else round(value, 6)


def compute(store: Any, report: Report, first: date, last: date, by: tuple[str, ...]) -> tuple[list[str], list[dict]]:
    """(columns, rows): a row per group (by's values, then each metric's value; with a plan:
    `plan` and `percent` = fact / plan × 100, one decimal, empty when there is no plan)."""
    groups: dict[tuple, dict[str, Any]] = {}
    for metric in report.metrics:
        for *keys, value in store.fact_totals(metric, report.aggregate, list(by), first.isoformat(), last.isoformat(),
                                              dict(report.where)):
            groups.setdefault(tuple(keys), {})[metric] = _number(value)
    columns = [*by, *report.metrics]
    if report.plan:
        for *keys, value in store.fact_totals(report.plan.metric, report.plan.aggregate, list(by),
                                              first.isoformat(), last.isoformat(), dict(report.where)):
            groups.setdefault(tuple(keys), {})["plan"] = _number(value)
        columns += ["plan", "percent"]
    rows = []
    for keys in sorted(groups):
        values = groups[keys]
        row = dict(zip(by, keys))
        for metric in report.metrics:   # a group with a plan and no fact: nothing counted yet
            row[metric] = values.get(metric, 0 if report.aggregate in ("sum", "count") else None)
        if report.plan:
            fact, plan = row[report.metrics[0]], values.get("plan")
            row["plan"] = plan
            row["percent"] = round(fact * 100 / plan, 1) if plan and fact is not None else None
        rows.append(row)
    return columns, rows


def answer(store: Any, reports: dict[str, Report], rules: list, name: str, args: dict[str, Any],
           today: date) -> tuple[str, str]:
    """(content type, text) of report `name` for these parameters; KeyError: no such report;
    BadRequest: a wrong parameter."""
    report = reports[name]
    first, last, by, fmt = parameters(report, rules, args, today)
    columns, rows = compute(store, report, first, last, by)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
        return "text/csv; charset=utf-8", out.getvalue()
    body = {"report": report.name, "title": report.title, "metrics": list(report.metrics),
            "aggregate": report.aggregate, "from": first.isoformat(), "to": last.isoformat(), "by": list(by),
            "where": dict(report.where),
            "plan": {"metric": report.plan.metric, "aggregate": report.plan.aggregate} if report.plan else None,
            "columns": columns, "rows": rows}
    return "application/json; charset=utf-8", json.dumps(body, ensure_ascii=False, indent=1) + "\n"
