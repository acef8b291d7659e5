"""Rule files: every error names file:line, what was expected and what was found."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import ConfigErrors
from connectors.base import Connection
from rules import MODULES
from rules.files import load_rules

CONNECTIONS = {"amo": Connection("amo", "amocrm"), "bot": Connection("bot", "telegram")}


def load(tmp_path: Path, text: str):
    (tmp_path / "rules.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, calendars={"kyiv": {"timezone": "Europe/Kyiv"}},
                      base=tmp_path)


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, text)
    return str(exc.value).splitlines()


GOOD = """
defaults: {connection: amo, calendar: kyiv}
rules:
  - name: Нова угода / New deal
    on: {event: stage.changed, stage: ["Новий клієнт", 142], from_stage: 10}
    if:
      - field: Бюджет
        gte: 1000
      - any: [{tag: VIP}, {not: {stage: Lost}}]
    after: 2 working days
    while: [{stage: "Новий клієнт"}]
    do:
      - create_task: "Зв'язатися з клієнтом"
      - send_message: {connection: bot, chat: "-100", text: "{{ entity.name }}"}
    otherwise:
      - add_note: "Not yet: {{ reason }}"
"""


def test_a_good_file_loads(tmp_path):
    ruleset = load(tmp_path, GOOD)
    [rule] = ruleset.rules
    assert rule.name == "Нова угода / New deal" and rule.line == 4 and rule.file == "rules.yaml"
    assert rule.trigger.connections == ("amo",) and rule.calendar == "kyiv"
    assert str(rule.delay.duration) == "2 working days"
    assert [a.verb for a in rule.actions] == ["create_task", "send_message"]
    assert rule.actions[0].options == {"text": "Зв'язатися з клієнтом"}
    assert [a.verb for a in rule.otherwise] == ["add_note"]


CASES = [
    pytest.param("rules:\n  - name: x\n    on: stage.change\n    do: [{add_note: a}]\n",
                 ["rules.yaml:3: rule \"x\" → on: unknown event kind 'stage.change'; expected one of: entity.created, "
                  "entity.updated, entity.deleted, stage.changed, field.changed, responsible.changed, file.added, "
                  "note.added, task.created, task.updated, task.completed, message.received, message.edited, "
                  "button.pressed, form.submitted, timer.fired, schedule.tick, call.ended, subscription.changed, "
                  "conversation.started, message.status"], id="unknown-event"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    do:\n      - move_to_stage: [Brief, Done]\n",
                 ["rules.yaml:5: rule \"x\" → do[0] → move_to_stage → stage: expected a stage name or id, "
                  "found ['Brief', 'Done']"], id="wrong-type"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    do:\n      - fly: away\n",
                 ["rules.yaml:5: rule \"x\" → do[0]: unknown action 'fly'; expected one of: "
                  + ", ".join(sorted(MODULES))], id="unknown-action"),  # every verb the package has
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    after: soon\n    do: [{add_note: a}]\n",
                 ["rules.yaml:4: rule \"x\" → after: expected a duration such as '3 days', '2 working days' or "
                  "'30-60 minutes', found 'soon'"], id="bad-duration"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    if:\n      - field: Budget\n        bigger: 3\n"
                 "    do: [{add_note: a}]\n",
                 ["rules.yaml:5: rule \"x\" → if[0]: field 'Budget': expected one comparison of: equals, not_equals, "
                  "in, gt, gte, lt, lte, filled, empty, matches, starts_with, contains, found ['bigger']"], id="bad-condition"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    do:\n      - send_message:\n          connection: bot\n"
                 "          chat: 1\n          text: \"{{ entity.name \"\n",
                 ["rules.yaml:8: rule \"x\" → do[0] → send_message → text: template error (template line 1): "
                  "unexpected end of template, expected 'end of print statement'."], id="template-syntax"),
    pytest.param("rules:\n  - name: x\n    on: {event: stage.changed, connection: nope}\n    do: [{add_note: a}]\n",
                 ["rules.yaml:3: rule \"x\" → on → connection: no connection 'nope' in connections.yaml"], id="unknown-connection"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    wat: 1\n    do: [{add_note: a}]\n",
                 ["rules.yaml:4: rule \"x\" → unknown key 'wat'; expected one of: after, at, before, calendar, "
                  "cancel_on, description, do, enabled, every, for_each, if, keep_timer, name, on, otherwise, restart, while"],
                 id="unknown-key"),
    pytest.param("rules:\n  - name: x\n    do: [{add_note: a}]\n",
                 ["rules.yaml:2: rule \"x\" → on: required; expected an event kind or a mapping with 'event:'"], id="missing-on"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    do: []\n",
                 ["rules.yaml:4: rule \"x\" → do: expected at least one action, found none"], id="no-actions"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    after: 1 day\n    before: {field: X, by: 1 hour}\n"
                 "    do: [{add_note: a}]\n",
                 ["rules.yaml:5: rule \"x\" → before: a rule waits one way; found both 'after' and 'before'"], id="two-delays"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    do: [{add_note: a}]\n  - name: x\n    on: stage.changed\n"
                 "    do: [{add_note: b}]\n",
                 ["rules.yaml:5: rule \"x\": the name is used twice (also at rules.yaml:2)"], id="duplicate-name"),
    pytest.param("rules:\n  - name: x\n   on: bad indent\n",
                 ["rules.yaml:3: invalid YAML: expected <block end>, but found '<block mapping start>'"], id="yaml-syntax"),
    pytest.param("rules:\n  - name: x\n    on: {schedule: {at: '9 am'}}\n    do: [{add_note: a}]\n",
                 ["rules.yaml:3: rule \"x\" → on → schedule: expected a time of day such as '09:30', found '9 am'"],
                 id="bad-schedule"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    cancel_on: {event: form.submitted, entity: 'lead:1'}\n"
                 "    do: [{add_note: a}]\n",
                 ["rules.yaml:4: rule \"x\" → cancel_on: only a delayed rule (after/at/before/every) has a timer to cancel"],
                 id="cancel-without-delay"),
    pytest.param("rules:\n  - name: x\n    on: stage.changed\n    calendar: mars\n    do: [{add_note: a}]\n",
                 ["rules.yaml:4: rule \"x\" → calendar: no calendar 'mars' in connections.yaml"], id="unknown-calendar"),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_errors_are_exact(tmp_path, text, expected):
    lines = errors(tmp_path, text)
    assert lines[:-1] == expected
    assert lines[-1].endswith("crmbridge did not start.")


def test_all_errors_are_reported_at_once(tmp_path):
    lines = errors(tmp_path, "rules:\n  - name: a\n    on: nope\n    do: [{fly: 1}]\n  - name: b\n    on: x\n    do: [{add_note: a}]\n")
    assert len(lines) == 4 and lines[-1] == "3 errors in 1 file; crmbridge did not start."


def test_disabled_rules_are_not_loaded(tmp_path):
    assert load(tmp_path, "rules:\n  - name: a\n    enabled: false\n    on: stage.changed\n    do: [{add_note: a}]\n").rules == []
