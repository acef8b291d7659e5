"""E3 repeat sales in the engine: `after: {cycle: <field of days>, default, time}` counted from the
win and moved into the working calendar, and the `new_deals` guard read when the timer fires. No I/O."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.loader import ConfigErrors
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.conditions import check
from rules.engine import data_needs, plan, plan_fired
from rules.files import load_rules

WON = datetime(2026, 12, 9, 13, 0, tzinfo=UTC)     # Wednesday 15:00 in Kyiv
CONNECTIONS = {"b24": Connection("b24", "bitrix24", calendar="kyiv")}
CALENDARS = {"kyiv": {"timezone": "Europe/Kyiv", "country": "UA", "hours": {"mon-fri": "09:00-18:00"}}}
RULES = """
rules:
  - name: offer
    on: {event: stage.changed, connection: b24, stage: WON}
    after: {cycle: "Цикл, днів", default: 30 days, time: "10:00"}
    keep_timer: true
    while: [{new_deals: 0}]
    do: [{create_task: {text: "Повторна покупка: {{ entity.name }}", due: 1 working day}}]
"""


def rules(tmp_path, text=RULES):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path, calendars=CALENDARS)


def won(cycle=None):
    data = {"stage": {"id": "WON", "name": "Угода успішна"}, "fields": {"Цикл, днів": cycle}}
    return (Event(id="b24:1", connection="b24", source="bitrix24", kind="stage.changed", entity=Entity("deal", "7401"),
                  data=data, raw={}, occurred_at=WON.isoformat()), {**data, "type": "deal", "id": "7401", "name": "Торт"})


@pytest.mark.parametrize("cycle, fires", [
    ("17", "2026-12-28T10:00:00+02:00"),         # Saturday 26th: the next working day, at 10:00
    (10, "2026-12-21T10:00:00+02:00"),           # Saturday 19th → Monday
    ("14 днів", "2026-12-23T10:00:00+02:00"),    # a Wednesday: as counted
    ("1,5", "2026-12-11T10:00:00+02:00"),        # days half up, as every duration: 2 days
    (None, "2027-01-08T10:00:00+02:00"),         # empty: the default, 30 days
    ("ні", "2027-01-08T10:00:00+02:00"),         # no number in it: the default
    ("0", "2027-01-08T10:00:00+02:00"),
])
def test_the_cycle_in_days_from_the_field_else_the_default_on_a_working_day(tmp_path, cycle, fires):
    result = plan(*won(cycle), rules(tmp_path), WON, MODULES)
    [timer] = result.timers
    assert timer.fire_at == fires


def test_without_a_default_an_empty_cycle_sets_no_timer_and_says_why(tmp_path):
    ruleset = rules(tmp_path, RULES.replace(", default: 30 days", ""))
    result = plan(*won(None), ruleset, WON, MODULES)
    assert result.timers == [] and "'Цикл, днів' is empty" in result.skipped[-1].reason


def test_the_guard_reads_the_clients_deals_and_a_new_one_cancels_the_offer(tmp_path):
    ruleset = rules(tmp_path)
    [timer] = plan(*won("17"), ruleset, WON, MODULES).timers
    assert data_needs(ruleset.rules) == {"deals"}                    # when the timer fires
    assert data_needs(ruleset.rules, {"stage.changed"}) == set()      # not on every stage change (keep_timer)
    event, entity = won("17")
    at = datetime.fromisoformat(timer.fire_at)
    older = {"id": "7300", "name": "Торт на день народження", "created": "2026-10-01T10:00:00+03:00", "open": False}
    fired = plan_fired(timer.__dict__, event, {**entity, "client_deals": [older]}, ruleset, at, MODULES)
    [task] = fired.actions
    assert task.args["text"] == "Повторна покупка: Торт"
    newer = {"id": "7410", "name": "Новий торт", "created": "2026-12-15T12:00:00+02:00", "open": True}
    fired = plan_fired(timer.__dict__, event, {**entity, "client_deals": [older, newer]}, ruleset, at, MODULES)
    assert fired.actions == []
    assert "1 new deal(s) of the client since 2026-12-09T13:00:00+00:00: Новий торт (7410)" in fired.skipped[0].reason
    unread = plan_fired(timer.__dict__, event, entity, ruleset, at, MODULES)
    assert unread.actions == [] and "the client's deals were not read" in unread.skipped[0].reason


def test_new_deals_counts_and_a_since_of_its_own():
    ctx = {"entity": {"id": "5", "client_deals": [{"id": "5", "created": "2026-12-20T00:00:00+00:00"},
                                                  {"id": "6", "created": "2026-12-01T00:00:00+00:00"},
                                                  {"id": "7", "created": None}]},
           "event": {"occurred_at": "2026-12-10T00:00:00+00:00"}, "now": WON}
    assert check({"new_deals": 1}, ctx) is None           # itself left out; no creation time counts as new
    assert check({"new_deals": {"gte": 2, "since": "2026-11-01"}}, ctx) is None
    assert "expected equals 0" in check({"new_deals": 0}, ctx)


@pytest.mark.parametrize("bad, says", [
    ('after: {cycle: "Цикл, днів", default: 30 dayz}', "did you mean"),
    ('after: {cycle: "Цикл, днів", defualt: 30 days}', "unknown key 'defualt'; expected cycle, default, time"),
    ('after: {cycle: "", default: 30 days}', "cycle: expected the name of a field"),
    ('after: {cycle: "Цикл, днів", default: 30-40 days}', "default: expected one duration"),
    ('after: {cycle: "Цикл, днів", time: "25:00"}', "after:"),
    ("while: [{new_deals: none}]", "new_deals: expected a number"),
    ("while: [{new_deals: {count: 0, from: x}}]", "new_deals: expected a number"),
])
def test_mistakes_are_said_at_start_up_with_their_line(tmp_path, bad, says):
    text = RULES.replace('after: {cycle: "Цикл, днів", default: 30 days, time: "10:00"}', bad) if bad.startswith(
        "after") else RULES.replace("while: [{new_deals: 0}]", bad)
    with pytest.raises(ConfigErrors, match=says) as caught:
        rules(tmp_path, text)
    assert "r.yaml:" in str(caught.value)
