"""start_next_task's `create:` list (Playbook A1): checked when the rules load, planned with
each task's deadline in working days of the rule's calendar."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from config.loader import ConfigErrors
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.engine import plan
from rules.files import load_rules

CONNECTIONS = {"pf": Connection("pf", "planfix")}
CALENDARS = {"kyiv": {"timezone": "Europe/Kyiv", "hours": {"mon-fri": "10:00-19:00"}}}
RULE = """
defaults: {connection: pf, calendar: kyiv}
rules:
  - name: next
    on: {event: stage.changed, entity: task, stage: "Завершена"}
    do:
      - start_next_task:
          status: "В роботі"
          create:
%s
"""


def load(tmp_path: Path, items: str):
    (tmp_path / "tasks.yaml").write_text(RULE % items, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path, calendars=CALENDARS)


PREFIX = ('tasks.yaml:9: rule "next" → do[0] → start_next_task → create: expected the service\'s tasks in '
          "order: [{name, executor, days, fields}], found ")


@pytest.mark.parametrize("items, found", [
    ('            - {name: "Рубрикатор", executor: "Ірина", hours: 3}',          # hours: not a key
     "[{'name': 'Рубрикатор', 'executor': 'Ірина', 'hours': 3}]"),
    ('            - {name: "Рубрикатор", days: "три"}',                          # days: a number
     "[{'name': 'Рубрикатор', 'days': 'три'}]"),
    ('            - {name: "Рубрикатор", days: 1}\n            - {name: "рубрикатор ", days: 2}',  # twice
     "[{'name': 'Рубрикатор', 'days': 1}, {'name': 'рубрикатор ', 'days': 2}]"),
    ('            - {executor: "Ірина", days: 2}',                               # no name
     "[{'executor': 'Ірина', 'days': 2}]"),
])
def test_a_wrong_create_list_is_refused_with_its_line(tmp_path, items, found):
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, items)
    assert str(exc.value).splitlines()[0] == PREFIX + found


def test_each_created_task_gets_its_own_deadline_in_working_days(tmp_path):
    ruleset = load(tmp_path, '            - {name: "Комунікація", executor: "Олена Коваленко", days: 2}\n'
                             '            - {name: "Рубрикатор", days: 3, fields: {"Тип задачі": "Рубрикатор"}}\n'
                             '            - {name: "Звіт"}')
    event = Event(id="e1", connection="pf", source="planfix", kind="stage.changed", entity=Entity("task", "1041"),
                  data={"stage": {"name": "Завершена"}}, raw={}, occurred_at="2026-11-27T15:00:00+00:00")
    friday_5pm_kyiv = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
    result = plan(event, {"type": "task", "id": "1041", "stage": {"id": 3, "name": "Завершена"}}, ruleset,
                  friday_5pm_kyiv, MODULES)
    [step] = result.actions
    assert step.method == "start_next_task"
    assert step.args["create"] == [
        {"name": "Комунікація", "responsible": "Олена Коваленко", "due": "2026-12-01T17:00:00+02:00", "fields": {}},
        {"name": "Рубрикатор", "responsible": None, "due": "2026-12-02T17:00:00+02:00",
         "fields": {"Тип задачі": "Рубрикатор"}},
        {"name": "Звіт", "responsible": None, "due": None, "fields": {}}]
    assert step.args["copy_fields"] == []
