"""working_seconds(from, to[, calendar]) in templates: the working time between two moments in the
rule's calendar, for a `record` of a duration that counts working hours only."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.connections import load_connections
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.calendar import WorkingCalendar
from rules.engine import plan
from rules.files import load_rules
from rules.templates import TemplateProblem, render

SHOP = WorkingCalendar.from_config({"timezone": "Europe/Kyiv", "hours": {"mon-sat": "10:00-19:00"}})
CALENDARS = "calendars:\n  shop: {timezone: Europe/Kyiv, hours: {mon-sat: '10:00-19:00'}}\n"
RULES = """
defaults: {connection: amo, calendar: shop}
rules:
  - name: Reply time
    on: {event: stage.changed}
    do:
      - record:
          metric: wait_seconds
          value: "{{ working_seconds(entity.asked_at, event.occurred_at) }}"
"""


def test_the_rules_calendar_counts_working_minutes_only():
    context = {"calendar": SHOP}
    # 18:59 Kyiv (16:59 UTC) asked, 10:02 Kyiv next day answered, hours to 19:00: 1 + 2 minutes
    assert render("{{ working_seconds('2026-12-08T16:59:00Z', '2026-12-09T08:02:00+00:00') }}", context) == "180"
    other = WorkingCalendar.from_config({"timezone": "Europe/Kyiv", "hours": {"mon-sun": "00:00-23:59"}})
    assert render("{{ working_seconds(a, b, other) }}", {**context, "other": other,
                  "a": datetime(2026, 12, 8, 16, 59, tzinfo=UTC), "b": datetime(2026, 12, 8, 17, 2, tzinfo=UTC)}) == "180"


@pytest.mark.parametrize("template, context, message", [
    ("{{ working_seconds('2026-12-08 10:00', '2026-12-08T10:00:00Z') }}", {"calendar": SHOP},
     "working_seconds: from: expected a timezone-aware datetime or ISO text, got '2026-12-08 10:00'"),
    ("{{ working_seconds('2026-12-08T10:00:00Z', 'soon') }}", {"calendar": SHOP}, "Invalid isoformat string"),
    ("{{ working_seconds('2026-12-08T10:00:00Z', '2026-12-08T11:00:00Z') }}", {"calendar": None},
     "working_seconds: expected the rule's calendar, got None"),
])
def test_what_cannot_be_counted_is_a_template_error(template, context, message):
    with pytest.raises(TemplateProblem, match=message):
        render(template, context)


def test_a_record_rule_keeps_the_working_seconds(tmp_path):
    (tmp_path / "connections.yaml").write_text(CALENDARS + "connections: {}\n", encoding="utf-8")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES, encoding="utf-8")
    rules = load_rules(tmp_path / "rules", MODULES, calendars=load_connections(tmp_path / "connections.yaml", {}).calendars,
                       connections={"amo": Connection("amo", "amocrm")}, base=tmp_path)
    event = Event(id="amo:9", connection="amo", source="amocrm", kind="stage.changed", entity=Entity("lead", "9"),
                  data={}, raw={}, occurred_at="2026-12-09T08:02:00+00:00")
    result = plan(event, {"type": "lead", "id": "9", "asked_at": "2026-12-08T16:59:00+00:00"}, rules,
                  datetime(2026, 12, 9, 8, 2, tzinfo=UTC), MODULES)
    assert result.errors == []
    [action] = result.actions
    assert (action.args["metric"], action.args["value"]) == ("wait_seconds", 180.0)
