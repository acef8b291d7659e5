"""The engine: which rules match and why not, the actions and timers it plans. No I/O."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.engine import plan
from rules.files import load_rules
from rules.templates import TemplateProblem, render

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=timezone.utc)  # Friday 17:00 in Kyiv
CONNECTIONS = {"amo": Connection("amo", "amocrm", calendar="kyiv"), "bot": Connection("bot", "telegram")}


def ruleset(tmp_path: Path, text: str):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path,
                      calendars={"kyiv": {"timezone": "Europe/Kyiv", "hours": {"mon-fri": "10:00-19:00"}}})


def stage_event(stage="10", name="Бриф отримано", fields=None, **data) -> tuple[Event, dict]:
    data = {"stage": {"id": stage, "name": name}, "previous_stage": {"id": "9", "name": "Новий"},
            "responsible": {"id": "938348", "name": "Olena"}, "name": "Угода", "fields": fields or {}, **data}
    event = Event(id="amo:1", connection="amo", source="amocrm", kind="stage.changed",
                  entity=Entity("lead", "77"), data=data, raw={}, occurred_at=NOW.isoformat())
    return event, {**data, "type": "lead", "id": "77"}


def run(tmp_path, text, event_entity):
    return plan(*event_entity, ruleset(tmp_path, text), NOW, MODULES)


def test_matching_rule_plans_its_actions_in_order(tmp_path):
    result = run(tmp_path, """
rules:
  - name: r
    on: {event: stage.changed, connection: amo, stage: "бриф отримано"}
    do:
      - create_task: {text: "Перевірити бриф {{ entity.name }}", due: 1 working day}
      - send_message: {connection: bot, chat: "-1", text: "{{ entity.responsible.name }}: {{ entity.name }}"}
""", stage_event())
    assert result.matched == [("r", "trigger and conditions hold")]
    create, send = result.actions
    assert (create.connection, create.method) == ("amo", "create_task")
    assert create.args == {"entity": {"type": "lead", "id": "77"}, "text": "Перевірити бриф Угода",
                           "due": "2026-11-30T17:00:00+02:00", "responsible": "938348", "task_type": None}
    assert (send.connection, send.args["text"]) == ("bot", "Olena: Угода")
    assert create.key == f"amo:1|{create.rule_id}|0" and send.key.endswith("|1")


@pytest.mark.parametrize("on, reason", [
    ("{event: entity.updated}", "event is stage.changed, rule listens to entity.updated"),
    ("{event: stage.changed, stage: Won}", "stage is 'Бриф отримано', not 'Won'"),
    ("{event: stage.changed, from_stage: [1, 2]}", "previous stage is 'Новий', not 1 or 2"),
    ("{event: stage.changed, connection: bot}", "connection is 'amo', not 'bot'"),
    ("{event: stage.changed, entity: contact}", "entity is a lead, not a contact"),
])
def test_trigger_misses_say_why(tmp_path, on, reason):
    result = run(tmp_path, f"rules:\n  - name: r\n    on: {on}\n    do: [{{add_note: x}}]\n", stage_event())
    assert result.skipped == [("r", reason)] and result.actions == []


@pytest.mark.parametrize("condition, reason", [
    ("{field: Бюджет, gte: 1000}", "field 'Бюджет' is '900'; expected gte 1000"),
    ("{filled: [Бюджет, Дата зустрічі]}", "not filled: Дата зустрічі"),
    ("{empty: [Бюджет]}", "filled: Бюджет"),
    ("{tag: VIP}", "no tag 'VIP'"),
    ("{expr: \"entity.fields['Бюджет'] | int > 1000\"}", "entity.fields['Бюджет'] | int > 1000 is false"),
    ("{any: [{stage: A}, {tag: B}]}", "none of: stage is 'Бриф отримано', not 'A'; no tag 'B'"),
    ("{not: {stage: 10}}", "the negated condition holds"),
])
def test_the_first_failed_condition_is_the_reason(tmp_path, condition, reason):
    text = f"rules:\n  - name: r\n    on: stage.changed\n    if:\n      - {condition}\n    do: [{{add_note: x}}]\n"
    result = run(tmp_path, text, stage_event(fields={"Бюджет": "900"}))
    assert result.skipped == [("r", reason)]


def test_otherwise_runs_when_a_condition_fails(tmp_path):
    result = run(tmp_path, """
rules:
  - name: gate
    on: stage.changed
    if: [{filled: ["Дата зустрічі"]}]
    do: [{add_note: ok}]
    otherwise:
      - move_to_stage: "{{ data.previous_stage.id }}"
      - add_note: "Stage move undone: {{ reason }}"
""", stage_event())
    back, note = result.actions
    assert back.args["stage"] == "9" and note.args["text"] == "Stage move undone: not filled: Дата зустрічі"


def test_for_each_plans_per_item_with_distinct_keys(tmp_path):
    result = run(tmp_path, """
rules:
  - name: fan-out
    on: stage.changed
    for_each: "entity.fields['Блогери']"
    do:
      - create_task: "Погодити таймінг: {{ item.name }}, {{ item.platform }}"
""", stage_event(fields={"Блогери": [{"name": "Анна", "platform": "Instagram"}, {"name": "Олег", "platform": "TikTok"}]}))
    assert [a.args["text"] for a in result.actions] == ["Погодити таймінг: Анна, Instagram", "Погодити таймінг: Олег, TikTok"]
    assert len({a.key for a in result.actions}) == 2


def test_an_action_may_name_another_entity(tmp_path):
    result = run(tmp_path, """
rules:
  - name: r
    on: stage.changed
    do:
      - create_task: {text: "Plan further work", entity: "contact:{{ entity.contacts[0] }}"}
""", stage_event(contacts=["501"]))
    assert result.actions[0].args["entity"] == {"type": "contact", "id": "501"}


def test_delayed_rules_plan_timers_and_guards_cancel_them(tmp_path):
    text = """
rules:
  - name: wait
    on: {event: stage.changed, stage: 10}
    after: 2 working days
    while: [{stage: 10}]
    do: [{add_note: x}]
"""
    result = run(tmp_path, text, stage_event())
    [timer] = result.timers
    assert timer.fire_at == "2026-12-01T17:00:00+02:00" and timer.entity == {"type": "lead", "id": "77"}
    assert result.actions == [] and result.cancels == []
    moved = run(tmp_path, text, stage_event(stage="11", name="Далі"))
    assert moved.timers == [] and moved.cancels == [(timer.timer_id, "wait: stage is 'Далі', not 10")]


def test_a_date_field_timer(tmp_path):
    text = """
rules:
  - name: payment
    on: stage.changed
    before: {field: "Оплачено до", by: 5 working days}
    do: [{add_note: x}]
"""
    [timer] = run(tmp_path, text, stage_event(fields={"Оплачено до": "2026-12-11"})).timers
    assert timer.fire_at == "2026-12-04T10:00:00+02:00"  # the start of that working day
    empty = run(tmp_path, text, stage_event())
    assert empty.timers == [] and empty.skipped == [("payment", "field 'Оплачено до' is empty: nothing to wait for")]


def test_a_runtime_template_error_stays_in_its_rule(tmp_path):
    result = run(tmp_path, """
rules:
  - name: broken
    on: stage.changed
    do: [{add_note: "{{ entity.nope.deeper }}"}]
  - name: fine
    on: stage.changed
    do: [{add_note: ok}]
""", stage_event())
    assert [a.rule for a in result.actions] == ["fine"]
    [(rule, message)] = result.errors
    assert rule == "broken" and message.startswith("r.yaml:5: add_note: template error: UndefinedError")


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ entity.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_templates_cannot_reach_python_internals(template):
    with pytest.raises(TemplateProblem):
        render(template, {"entity": {}})


# --- why not, in parts (the decision history keeps them; cli.py explain reads them) -------------

@pytest.mark.parametrize("on, key, have, want, listening", [
    ("{event: entity.updated}", "event", "stage.changed", ["entity.updated"], False),
    ("{event: stage.changed, stage: Won}", "stage", "Бриф отримано", "Won", True),
    ("{event: stage.changed, from_stage: [1, 2]}", "from_stage", "Новий", [1, 2], True),
    ("{event: stage.changed, connection: bot}", "connection", "amo", ["bot"], True),
    ("{event: stage.changed, entity: contact}", "entity", "lead", "contact", True),
])
def test_a_trigger_miss_names_its_key_and_the_values_compared(tmp_path, on, key, have, want, listening):
    result = run(tmp_path, f"rules:\n  - name: r\n    on: {on}\n    do: [{{add_note: x}}]\n", stage_event())
    [skip] = result.skipped
    assert (skip.stage, skip.key, skip.have, skip.want, skip.listening) == ("trigger", key, have, want, listening)
    assert skip.rule_id == ruleset(tmp_path, f"rules:\n  - name: r\n    on: {on}\n    do: [{{add_note: x}}]\n").rules[0].id


def test_a_failed_condition_is_kept_as_written_with_both_values(tmp_path):
    text = """
rules:
  - name: Brief received → task
    on: stage.changed
    if:
      - {stage: "Бриф отримано"}
      - {field: Budget, gt: 0}
      - {tag: VIP}
    do: [{add_note: x}]
"""
    result = run(tmp_path, text, stage_event(fields={"Budget": 0}))
    [skip] = result.skipped
    assert skip == ("Brief received → task", "field 'Budget' is 0; expected gt 0")
    assert skip.details() == {"rule": "Brief received → task", "rule_id": skip.rule_id, "stage": "condition",
                              "reason": "field 'Budget' is 0; expected gt 0",
                              "key": {"field": "Budget", "gt": 0}, "have": 0, "want": {"gt": 0}}


def test_a_guard_that_no_longer_holds_names_its_condition(tmp_path):
    from rules.engine import plan_fired
    rules = ruleset(tmp_path, """
rules:
  - name: nudge
    on: stage.changed
    after: 2 hours
    while: [{stage: "Бриф отримано"}]
    do: [{add_note: x}]
""")
    event, entity = stage_event()
    [timer] = plan(event, entity, rules, NOW, MODULES).timers
    moved = {**entity, "stage": {"id": "11", "name": "Won"}}
    result = plan_fired(timer.__dict__, event, moved, rules, NOW, MODULES)
    [skip] = result.skipped
    assert skip.reason == "guard no longer holds: stage is 'Won', not 'Бриф отримано'"
    assert (skip.stage, skip.key, skip.have, skip.want) == ("guard", {"stage": "Бриф отримано"}, "Won", "Бриф отримано")
