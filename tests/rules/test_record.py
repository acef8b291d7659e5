"""The `record` verb: options checked at start-up (file:line), values read as numbers, the step's
arguments (the moment dated in the rule calendar's zone), a value that is no number as a rule
error, the step storing once and failing retryably when its database does not answer; and
reports.yaml checked against the metrics the rules record."""
from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

import reports
from config.loader import ConfigErrors
from config.settings import Settings
from connectors.base import Connection, Entity, Event, RetryableApiError
from pipeline.steps import StepContext
from pipeline.steps import record as record_step
from rules import MODULES
from rules.engine import plan
from rules.files import load_rules
from rules.record import number
from tests.history_db import history_settings  # noqa: F401  (a fixture)

NOW = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)   # 00:30 on 1 December in Kyiv
CONNECTIONS = {"amo": Connection("amo", "amocrm")}
CALENDAR = "calendars:\n  office: {timezone: Europe/Kyiv, country: UA}\n"
RULES = """
defaults: {connection: amo, calendar: office}
rules:
  - name: Won → revenue
    on: {event: stage.changed}
    do:
      - record:
          metric: revenue
          value: "{{ entity.price }}"
          dimensions: {manager: "{{ entity.responsible.name }}", pipeline: "{{ entity.pipeline.name }}"}
      - record: inquiries
"""


def ruleset(tmp_path: Path, text: str = RULES):
    from config.connections import load_connections
    (tmp_path / "connections.yaml").write_text(CALENDAR + "connections: {}\n", encoding="utf-8")
    calendars = load_connections(tmp_path / "connections.yaml", {}).calendars
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path / "rules", MODULES, calendars=calendars, connections=CONNECTIONS, base=tmp_path)


def lead_event(price: object = "150 000,50") -> tuple[Event, dict]:
    event = Event(id="amo:9", connection="amo", source="amocrm", kind="stage.changed", entity=Entity("lead", "9"),
                  data={}, raw={}, occurred_at=NOW.isoformat())
    return event, {"type": "lead", "id": "9", "price": price, "responsible": {"id": "1", "name": "Олена"},
                   "pipeline": {"id": "2", "name": "Продажі"}}


@pytest.mark.parametrize("text, value", [(12, 12.0), ("12,5", 12.5), ("150 000", 150000.0), ("1,500.50", 1500.5),
                                         ("-3", -3.0), ("1\u00a0200", 1200.0), (0.25, 0.25)])
def test_values_read_as_numbers(text, value):
    assert number(text) == value


@pytest.mark.parametrize("text", ["", None, "abc", True, "nan", "inf", "1.2.3"])
def test_what_is_no_number(text):
    with pytest.raises(ValueError):
        number(text)


def test_the_step_carries_the_fact_dated_in_the_calendars_zone(tmp_path):
    result = plan(*lead_event(), ruleset(tmp_path), NOW, MODULES)
    assert result.errors == []
    first, second = result.actions
    assert (first.method, first.connection) == ("record", "amo")
    assert first.args == {"metric": "revenue", "value": 150000.5, "dimensions": {"manager": "Олена", "pipeline": "Продажі"},
                          "at": NOW.isoformat(), "zone": "Europe/Kyiv", "rule": "Won → revenue", "event_id": "amo:9",
                          "record": "lead:9"}
    assert second.args["metric"] == "inquiries" and second.args["value"] == 1.0
    assert first.key.endswith("|0") and second.key.endswith("|1") and first.key.startswith("amo:9|")


def test_a_value_that_is_no_number_is_a_rule_error_with_the_line(tmp_path):
    result = plan(*lead_event(price=None), ruleset(tmp_path), NOW, MODULES)
    assert [a.args["metric"] for a in result.actions] == ["inquiries"]
    [(rule, error)] = result.errors
    assert rule == "Won → revenue" and error.startswith("rules/r.yaml:7: record: ")
    assert "expected a number, found ''" in error


@pytest.mark.parametrize("action, message", [
    ("record: {metric: 'my revenue'}", "metric: expected a plain metric name (letters, digits, _ . -), found 'my revenue'"),
    ("record: {metric: revenue, value: lots}", "value: expected a number, found 'lots'"),
    ("record: {metric: revenue, dimensions: {day: x}}", "dimensions: expected a mapping of dimension names "
     "(letters, digits and _; not day or month) to texts, found {'day': 'x'}"),
    ("record: {metric: revenue, dimensions: {'my manager': x}}", "found {'my manager': 'x'}"),
    ("record: {metric: revenue, valeu: 1}", "valeu"),
])
def test_wrong_options_stop_the_start_with_file_and_line(tmp_path, action, message):
    text = f"defaults: {{connection: amo}}\nrules:\n  - name: r\n    on: stage.changed\n    do:\n      - {action}\n"
    with pytest.raises(ConfigErrors) as caught:
        ruleset(tmp_path, text)
    assert message in str(caught.value) and str(caught.value).startswith('rules/r.yaml:6: rule "r" → do[0] → record')


def test_the_step_stores_once_per_key(history_settings):
    settings = Settings(history_retention=3600, **history_settings)
    ctx = StepContext(rt=SimpleNamespace(settings=settings), client=None, key="amo:9|abc|0", connection="amo")
    args = dict(metric="revenue", value=10.0, dimensions={"manager": "Олена"}, at=NOW.isoformat(), zone="Europe/Kyiv",
                rule="r", event_id="amo:9", record="lead:9")
    assert record_step.run(ctx, **args) == {"recorded": True, "metric": "revenue", "value": 10.0, "day": "2026-12-01"}
    assert record_step.run(ctx, **args)["recorded"] is False   # a re-run job, a repeated event
    other = replace(ctx, key="amo:9|abc|1")
    assert record_step.run(other, **{**args, "value": 5.0})["recorded"] is True
    facts = record_step.store(settings)
    assert facts.fact_totals("revenue", "sum", ["day", "manager"], "2026-12-01", "2026-12-01") == [
        ("2026-12-01", "Олена", 15.0)]
    assert facts.fact_totals("revenue", "count", [], "2026-11-30", "2026-11-30") == [(0,)]


def test_a_store_that_does_not_answer_fails_the_step_retryably(tmp_path):
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", history_retention=3600)
    ctx = StepContext(rt=SimpleNamespace(settings=settings), client=None, key="k|r|0", connection="amo")
    with pytest.raises(RetryableApiError, match="fact 'revenue' not recorded: the postgresql store failed"):
        record_step.run(ctx, metric="revenue", value=1.0, dimensions={}, at=NOW.isoformat(), zone="UTC", rule="r",
                        event_id="k", record="lead:1")


REPORTS_OK = """
reports:
  sales:
    metric: revenue
    by: [month, manager]
"""


@pytest.mark.parametrize("text, message", [
    ("reports:\n  sales:\n    metric: revenu\n",
     "reports.yaml:3: report \"sales\" → metric: no rule records 'revenu'; recorded: inquiries, revenue; did you mean 'revenue'?"),
    ("reports:\n  sales:\n    metric: revenue\n    by: [month, manger]\n",
     "reports.yaml:4: report \"sales\" → by: unknown dimension 'manger'; revenue can be grouped by day, manager, month, "
     "pipeline; did you mean 'manager'?"),
    ("reports:\n  sales:\n    metric: revenue\n    aggregate: total\n",
     "reports.yaml:4: report \"sales\" → aggregate: expected one of sum, count, avg, min, max or a percentile such "
     "as p50, p90, found 'total'"),
    ("reports:\n  sales:\n    metric: revenue\n    aggregate: median\n",
     "reports.yaml:4: report \"sales\" → aggregate: expected one of sum, count, avg, min, max or a percentile such "
     "as p50, p90, found 'median'; did you mean 'p50'?"),
    ("reports:\n  sales:\n    metric: revenue\n    aggregate: p100\n",
     "reports.yaml:4: report \"sales\" → aggregate: expected one of sum, count, avg, min, max or a percentile such "
     "as p50, p90, found 'p100'"),
    ("reports:\n  sales:\n    metric: revenue\n    plan: {metric: inquiries, aggregate: p0}\n",
     "reports.yaml:4: report \"sales\" → plan → aggregate: expected one of sum, count, avg, min, max or a "
     "percentile such as p50, p90, found 'p0'"),
    ("reports:\n  sales:\n    metric: revenue\n    by: manager\n    plan: inquiries\n",
     "reports.yaml:5: report \"sales\" → plan: the plan 'inquiries' is not recorded by 'manager', which the report "
     "groups by: record it with those dimensions or group by fewer"),
    ("reports:\n  sales:\n    metric: revenue\n    group: manager\n",
     "reports.yaml:4: report \"sales\": unknown key 'group'; expected title, metric, aggregate, by, where, plan"),
    ("reports:\n  sales:\n    metric: revenue\n    where: {manger: Олена}\n",
     "reports.yaml:4: report \"sales\" → where: unknown dimension 'manger'; revenue can be filtered by manager, "
     "pipeline; did you mean 'manager'?"),
    ("reports:\n  sales:\n    metric: revenue\n    where:\n      month: 2026-12\n",
     "reports.yaml:5: report \"sales\" → where: unknown dimension 'month'; revenue can be filtered by manager, "
     "pipeline; use from/to for days"),
    ("reports:\n  sales:\n    metric: revenue\n    where: {manager: [Олена, Іван]}\n",
     "reports.yaml:4: report \"sales\" → where → manager: expected a text value, found ['Олена', 'Іван']"),
    ("reports:\n  sales:\n    metric: revenue\n    where: manager\n",
     "reports.yaml:4: report \"sales\" → where: expected a mapping of dimension to value such as {reply: first}, "
     "found 'manager'"),
])
def test_reports_are_checked_against_what_the_rules_record(tmp_path, text, message):
    rules = ruleset(tmp_path).rules
    (tmp_path / "reports.yaml").write_text(text, encoding="utf-8")
    errors = [str(e) for e in reports.check(tmp_path, rules)]
    assert len(errors) == 1 and errors[0].endswith(message), errors


def test_a_plan_group_without_facts_shows_nothing_done_yet(tmp_path, history_settings):
    settings = Settings(history_retention=3600, **history_settings)
    facts = record_step.store(settings)
    from pipeline import history
    at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    for key, metric, value, manager in (("e1|r|0", "revenue", 700, "Олена"), ("e2|r|0", "revenue", 300, "Олена"),
                                        ("e3|p|0", "revenue_plan", 2000, "Олена"), ("e4|p|0", "revenue_plan", 500, "Іван")):
        facts.add_fact(history.fact_row(key, key[:2], "amo", "lead:1", "r", at, "Europe/Kyiv", metric, value,
                                        {"manager": manager}))
    report = reports.Report("sales", ("revenue",), "sum", ("manager",), "sales", reports.Plan("revenue_plan", "max"), 1)
    columns, rows = reports.compute(facts, report, datetime(2026, 12, 1).date(), datetime(2026, 12, 31).date(), ("manager",))
    assert columns == ["manager", "revenue", "plan", "percent"]
    assert rows == [{"manager": "Іван", "revenue": 0, "plan": 500, "percent": 0.0},
                    {"manager": "Олена", "revenue": 1000, "plan": 2000, "percent": 50.0}]


def test_percentiles_are_postgresqls_percentile_cont_on_both_backends(tmp_path, history_settings):
    """p50/p90 per group: on PostgreSQL its own percentile_cont, on SQLite the same interpolation in
    Python; the same numbers on both (the fixture runs this once per backend)."""
    rules = ruleset(tmp_path).rules
    (tmp_path / "reports.yaml").write_text("reports:\n  p90:\n    metric: revenue\n    aggregate: p90\n"
                                           "    by: manager\n", encoding="utf-8")
    assert reports.check(tmp_path, rules) == []
    settings = Settings(history_retention=3600, **history_settings)
    facts = record_step.store(settings)
    from pipeline import history
    at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    values = {"Олена": [40, 10, 30, 20], "Іван": [7], "": [100, 200]}   # "": facts without the dimension
    for manager, numbers in values.items():
        for i, value in enumerate(numbers):
            dims = {"manager": manager} if manager else {}
            facts.add_fact(history.fact_row(f"{manager}{i}|r|0", "e", "amo", "lead:1", "r", at, "Europe/Kyiv",
                                            "revenue", value, dims))
    first, last = datetime(2026, 12, 1).date(), datetime(2026, 12, 31).date()

    def rows(aggregate: str, by: tuple[str, ...] = ("manager",)) -> list[dict]:
        report = reports.Report("r", ("revenue",), aggregate, by, "r", None, 1)
        return reports.compute(facts, report, first, last, by)[1]

    # Олена 10 20 30 40: p50 at 1.5 → 25; p90 at 2.7 → 30 + 0.7 × 10 = 37
    assert rows("p50") == [{"manager": "", "revenue": 150}, {"manager": "Іван", "revenue": 7},
                           {"manager": "Олена", "revenue": 25}]
    assert rows("p90") == [{"manager": "", "revenue": 190}, {"manager": "Іван", "revenue": 7},
                           {"manager": "Олена", "revenue": 37}]
    # all seven, ungrouped: 7 10 20 30 40 100 200 → p90 at 5.4 → 100 + 0.4 × 100 = 140; p99.5 → 197
    assert rows("p90", ()) == [{"revenue": 140}]
    assert rows("p99.5", ()) == [{"revenue": 197}]
    assert rows("p50", ("month",)) == [{"month": "2026-12", "revenue": 30}]
    only = reports.Report("r", ("revenue",), "p90", ("month",), "r", None, 1, (("manager", "Олена"),))
    assert reports.compute(facts, only, first, last, ("month",))[1] == [{"month": "2026-12", "revenue": 37}]
    counted = reports.Report("r", ("revenue",), "count", (), "r", None, 1, (("manager", "Олена"),))
    assert reports.compute(facts, counted, first, last, ())[1] == [{"revenue": 4}]
    assert facts.fact_totals("revenue", "sum", ["manager"], "2026-12-01", "2026-12-31", {"manager": "Іван"}) == [
        ("Іван", 7.0)]
    none = reports.Report("r", ("revenue",), "p50", ("manager",), "r", None, 1)
    assert reports.compute(facts, none, first, first, ("manager",))[1] == []   # no facts those days
    assert facts.fact_totals("revenue", "p50", [], "2026-11-01", "2026-11-02") == []


def test_percentile_cont_interpolates_between_the_nearest_values():
    from pipeline.history import percentile, percentile_cont
    assert percentile_cont([1.0], 0.9) == 1.0
    assert percentile_cont([10.0, 20.0, 30.0, 40.0], 0.5) == 25.0
    assert percentile_cont([3.0, 1.0, 2.0], 0.0001) == pytest.approx(1.0002)
    assert [percentile(a) for a in ("p50", "p90", "p99.9", "p0", "p100", "sum", "p")] == [
        0.5, 0.9, pytest.approx(0.999), None, None, None, None]


def test_the_names_record_keeps_for_dates_are_the_reports_periods():
    from rules.record import RESERVED
    assert RESERVED == reports.PERIODS


def test_every_mistake_of_a_report_is_told_at_once(tmp_path):
    rules = ruleset(tmp_path).rules
    (tmp_path / "reports.yaml").write_text("reports:\n  sales:\n    metric: revenue\n    aggregate: median\n"
                                           "    by: [month, manger]\n    where: {pipelin: Продажі}\n", encoding="utf-8")
    errors = [str(e).split("reports.yaml:", 1)[1] for e in reports.check(tmp_path, rules)]
    assert [e.split(":", 1)[0] for e in errors] == ["4", "5", "6"]
    assert "did you mean 'p50'?" in errors[0] and "did you mean 'manager'?" in errors[1]
    assert "did you mean 'pipeline'?" in errors[2]
