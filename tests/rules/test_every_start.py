"""`every:` with a first firing of its own (`start:`, from now or from a date field), and the
`call_back` verb's planning: working hours only, the pause after a talk. No I/O."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.loader import ConfigErrors
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.engine import plan, plan_fired
from rules.files import load_rules

NOW = datetime(2026, 12, 3, 17, 0, tzinfo=UTC)  # Thursday 20:00 in Moscow, after hours
CONNECTIONS = {"amo": Connection("amo", "amocrm", calendar="msk"), "zd": Connection("zd", "zadarma")}
CALENDARS = {"msk": {"timezone": "Europe/Moscow", "country": "RU", "hours": {"mon-fri": "10:00-19:00"}}}
CALLS = """
rules:
  - name: calls
    on: {event: stage.changed, connection: amo}
    every: {start: 10 days, interval: 30-60 working minutes}
    while: [{stage: "Получение брифа"}]
    do: [{call_back: {connection: zd, manager: "{{ entity.responsible.id }}", client: "{{ entity.fields['Телефон'] }}"}}]
  - name: after the decision date
    on: {event: stage.changed, connection: amo}
    every: {field: "Дата принятия решения", start: [7 days, 5 working days], interval: 1 working hour}
    do: [{call_back: {connection: zd, manager: "100", client: "+7 916 123-45-67", pause_after_talk: 2}}]
"""


def rules(tmp_path, text=CALLS):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path, calendars=CALENDARS)


def event(fields=None):
    data = {"stage": {"id": "5", "name": "Получение брифа"}, "responsible": {"id": "938348", "name": "Ольга"},
            "fields": {"Телефон": "+7 916 123-45-67", **(fields or {})}}
    return (Event(id="amo:1", connection="amo", source="amocrm", kind="stage.changed", entity=Entity("lead", "7"),
                  data=data, raw={}, occurred_at=NOW.isoformat()), {**data, "type": "lead", "id": "7"})


def test_the_first_firing_waits_for_working_time_then_the_interval_repeats(tmp_path):
    ruleset = rules(tmp_path)
    result = plan(*event({"Дата принятия решения": "2026-12-07"}), ruleset, NOW, MODULES)
    fire = {t.rule: t.fire_at for t in result.timers}
    assert fire["calls"] == "2026-12-14T10:00:00+03:00"    # day 10 is Sunday 13th, 20:00: Monday opening
    assert fire["after the decision date"] == "2026-12-21T10:00:00+03:00"  # 7 days → Mon 14th, + 5 working days
    [calls] = [t for t in result.timers if t.rule == "calls"]
    at = datetime.fromisoformat(calls.fire_at)
    fired = plan_fired(calls.__dict__, event()[0], event()[1], ruleset, at, MODULES)
    [call] = fired.actions
    assert call.args["pause_until"] == "2026-12-16T10:00:00+03:00"   # talked Monday: rest of it and Tuesday
    [again] = fired.timers
    assert again.timer_id == calls.timer_id
    gap = datetime.fromisoformat(again.fire_at) - at
    assert 30 * 60 <= gap.total_seconds() <= 60 * 60


def test_no_call_is_planned_outside_working_hours(tmp_path):
    ruleset = rules(tmp_path)
    [calls] = [t for t in plan(*event(), ruleset, NOW, MODULES).timers if t.rule == "calls"]
    late = datetime(2026, 12, 14, 16, 30, tzinfo=UTC)  # 19:30 in Moscow
    fired = plan_fired(calls.__dict__, *event(), ruleset, late, MODULES)
    assert fired.actions == [] and "outside the working hours" in fired.errors[0][1]
    assert fired.timers  # the timer goes on, into working time
    assert datetime.fromisoformat(fired.timers[0].fire_at) >= datetime.fromisoformat("2026-12-15T10:30:00+03:00")


def test_an_empty_date_field_waits_for_nothing_and_unknown_keys_are_refused(tmp_path):
    result = plan(*event(), rules(tmp_path), NOW, MODULES)
    assert ("after the decision date", "field 'Дата принятия решения' is empty: nothing to wait for") in result.skipped
    with pytest.raises(ConfigErrors, match="every: unknown key 'strat'"):
        rules(tmp_path, CALLS.replace("every: {start: 10 days", "every: {strat: 10 days"))
