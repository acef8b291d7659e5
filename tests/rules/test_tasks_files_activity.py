"""Engine features of issue 7: file_name and result filters, open_tasks, no_activity, has_file,
moved, parent conditions, field_groups fan-out, and the verbs add_tags, complete_task,
copy_entity, move_to_stage only_forward. No I/O."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from config.loader import ConfigErrors
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.conditions import check, name_matches, validate
from rules.engine import data_needs, plan
from rules.files import load_rules
from rules.templates import TemplateProblem, evaluate

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # Friday 15:00 in Moscow
CONNECTIONS = {"amo": Connection("amo", "amocrm", calendar="msk")}
CALENDARS = {"msk": {"timezone": "Europe/Moscow", "country": "RU", "hours": {"mon-fri": "10:00-19:00"}}}


def ruleset(tmp_path: Path, text: str):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path, calendars=CALENDARS)


def event(kind: str, data: dict, entity=("lead", "77")) -> Event:
    return Event(id="amo:1", connection="amo", source="amocrm", kind=kind, entity=Entity(*entity), data=data,
                 raw={}, occurred_at=NOW.isoformat())


def ctx(entity: dict, now=NOW) -> dict:
    return {"entity": entity, "now": now, "calendar": None}


# --- file names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name, pattern, hit", [
    ("Коммерческое предложение Весна.pdf", "Коммерческое предложение*", True),
    ("коммерческое предложение.docx", "Коммерческое предложение*", True),
    ("КП Весна.pdf", "Коммерческое предложение*", False),
    ("Старое коммерческое предложение.pdf", "Коммерческое предложение*", False),
    ('Отчет по проекту "Весна".pdf', 'Отчет по проекту "Весна"', True),
    ('Отчет по проекту "Весна"', 'Отчет по проекту "Весна"', True),
    ('Отчет по проекту "Весна 2".pdf', 'Отчет по проекту "Весна"', False),
    ("Отчет по проекту Весна.pdf", 'Отчет по проекту "Весна"', False),
    ('Отчет по проекту "Весна" (черновик).pdf', 'Отчет по проекту "Весна"', False),
])
def test_name_matches_with_or_without_the_extension_and_nothing_near(name, pattern, hit):
    assert name_matches(name, pattern) is hit


RULES = """
defaults: {connection: amo, calendar: msk}
rules:
  - name: proposal uploaded
    on: {event: file.added, file_name: "Коммерческое предложение*"}
    do: [{move_to_stage: {stage: "Согласование КП", only_forward: true}}]
  - name: report uploaded
    on: {event: file.added, file_name: 'Отчет по проекту "{{ entity.name }}"'}
    do: [{add_note: "Отчет загружен"}]
  - name: approved
    on: {event: task.completed, result: Согласовано}
    do: [{create_task: {entity: "lead:{{ entity.parent.id }}", text: "Отправить КП клиенту"}}]
  - name: not approved
    on: {event: task.completed, result: ["Не согласовано", "Не согласовано:*"]}
    do: [{create_task: {entity: "lead:{{ entity.parent.id }}", text: "Переделать КП"}}]
"""


def file_event(name: str, deal="Весна") -> tuple[Event, dict]:
    data = {"note": {"type": "5", "text": name}, "file": {"name": name, "note_id": "1"}}
    return event("file.added", data), {"type": "lead", "id": "77", "name": deal, **data}


def test_file_name_filter_by_pattern_and_by_the_deals_own_name(tmp_path):
    rules = ruleset(tmp_path, RULES)
    result = plan(*file_event("Коммерческое предложение v2.pdf"), rules, NOW, MODULES)
    assert [a.method for a in result.actions] == ["move_forward"]   # move_to_stage with only_forward
    assert result.actions[0].args["stage"] == "Согласование КП"
    result = plan(*file_event('Отчет по проекту "Весна".pdf'), rules, NOW, MODULES)
    assert [(a.rule, a.method) for a in result.actions] == [("report uploaded", "add_note")]
    near = plan(*file_event('Отчет по проекту "Весна-2".pdf'), rules, NOW, MODULES)
    assert near.actions == []
    assert ("report uploaded", """file is 'Отчет по проекту "Весна-2".pdf', not 'Отчет по проекту "Весна"'""") in near.skipped


def test_result_filter_tells_approved_from_not_approved(tmp_path):
    rules = ruleset(tmp_path, RULES)
    task = {"type": "task", "id": "5", "text": "Согласовать КП", "parent": {"type": "lead", "id": "77"}}
    for result_text, expected in [("Согласовано", ["Отправить КП клиенту"]), ("не согласовано", ["Переделать КП"]),
                                  ("Не согласовано: цены", ["Переделать КП"]), ("Посмотрю завтра", [])]:
        planned = plan(event("task.completed", {"result": result_text}, ("task", "5")), {**task, "result": result_text},
                       rules, NOW, MODULES)
        assert [a.args["text"] for a in planned.actions] == expected, result_text
        assert all(a.args["entity"] == {"type": "lead", "id": "77"} for a in planned.actions)


@pytest.mark.parametrize("on, message", [
    ("{event: file.added, file_name: 42}", "on → file_name: expected a file name pattern such as 'Договор*' or a list of them, found 42"),
    ("{event: file.added, file_name: 'Отчет {{ entity.name '}", "on → file_name: template error"),
    ("{event: task.completed, result: []}", "on → result: expected a task result text or a list of them, found []"),
])
def test_filter_values_are_checked_when_the_files_load(tmp_path, on, message):
    with pytest.raises(ConfigErrors) as err:
        ruleset(tmp_path, f"rules:\n  - name: x\n    on: {on}\n    do: [{{add_note: x}}]\n")
    assert str(err.value.errors[0]).startswith("r.yaml:3: ") and message in str(err.value.errors[0])


# --- conditions -------------------------------------------------------------------------------

TASKS = [{"id": "1", "text": "Согласовать тайминг: Бузова", "completed": False, "created_at": "2026-11-20T10:00:00+00:00"},
         {"id": "2", "text": "Подготовить контент: Бузова", "completed": False, "created_at": "2026-11-25T10:00:00+00:00"},
         {"id": "3", "text": "Подготовить контент: Ивлеева", "completed": True, "created_at": "2026-11-25T10:00:00+00:00"}]


@pytest.mark.parametrize("condition, reason", [
    ({"open_tasks": 2}, None),
    ({"open_tasks": 0}, "2 open task(s): Согласовать тайминг: Бузова; Подготовить контент: Бузова; expected equals 0"),
    ({"open_tasks": {"stage": "current", "count": 1}}, None),
    ({"open_tasks": {"stage": "previous", "count": 0}},
     "1 open task(s) of the previous stage: Согласовать тайминг: Бузова; expected equals 0"),
    ({"open_tasks": {"text": "^подготовить контент", "gt": 0}}, None),
    ({"open_tasks": {"text": "^Получить закрывающие", "count": 0}}, None),
])
def test_open_tasks_counts_the_entitys_open_tasks_optionally_of_a_stage(condition, reason):
    entity = {"tasks": TASKS, "stage_since": "2026-11-24T09:00:00+00:00"}
    assert validate(condition) is None
    assert check(condition, ctx(entity)) == reason


def test_conditions_on_data_not_read_fail_and_say_so():
    assert check({"open_tasks": 0}, ctx({})) == "the entity's tasks were not read"
    assert check({"no_activity": "3 days"}, ctx({})) == "the entity's activity was not read"
    assert check({"has_file": "x*"}, ctx({})) == "the entity's files were not read"
    assert check({"parent": [{"stage": "A"}]}, ctx({"parent": {"type": "lead", "id": "1"}})) == "the parent record was not read"


def test_no_activity_since_the_last_call_note_or_move():
    quiet = {"last_activity": "2026-11-24T11:59:00+00:00"}
    assert check({"no_activity": "3 days"}, ctx(quiet)) is None
    busy = {"last_activity": "2026-11-25T09:00:00+00:00"}
    assert check({"no_activity": "3 days"}, ctx(busy)) == "activity at 2026-11-25T09:00:00+00:00, less than 3 days ago"
    assert check({"no_activity": "3 days"}, ctx({"last_activity": None})) is None  # nothing ever happened


def test_has_file_renders_its_pattern_against_the_entity():
    entity = {"name": "Весна", "files": [{"name": 'Отчет по проекту "Весна-2".pdf'}]}
    condition = {"has_file": 'Отчет по проекту "{{ entity.name }}"'}
    assert check(condition, ctx(entity)) == """no file named 'Отчет по проекту "Весна"'"""
    entity["files"].append({"name": 'Отчет по проекту "Весна".docx'})
    assert check(condition, ctx(entity)) is None


def test_moved_compares_the_stages_places_in_the_pipeline():
    entity = {"stage": {"id": "3", "name": "Согласование контента", "position": 2},
              "previous_stage": {"id": "1", "name": "Тайминг", "position": 0}, "pipeline": {"id": "7"}}
    assert check({"moved": "forward"}, ctx(entity)) is None
    assert check({"moved": "backward"}, ctx(entity)) == "moved forward, from 'Тайминг' to 'Согласование контента'"
    assert check({"moved": "forward"}, ctx({**entity, "previous_pipeline": {"id": "8"}})) == "moved to another pipeline"


def test_parent_checks_a_tasks_record():
    task = {"type": "task", "id": "5", "parent": {"type": "lead", "id": "77", "pipeline": {"id": "7", "name": "Реализация"},
                                                  "tasks": []}}
    assert check({"parent": [{"pipeline": "Реализация"}, {"open_tasks": 0}]}, ctx(task)) is None
    assert check({"parent": [{"pipeline": "Продажи"}]}, ctx(task)) == (
        "parent lead 77: pipeline is 'Реализация', not 'Продажи'")


@pytest.mark.parametrize("condition, problem", [
    ({"open_tasks": "none"}, ("open_tasks: expected a number, or {count|gt|gte|lt|lte: <number>, stage: current|previous, "
                             "text: <regex>}, found 'none'")),
    ({"open_tasks": {"stage": "next", "count": 0}}, "open_tasks → stage: expected current or previous, found 'next'"),
    ({"no_activity": "three days"}, "no_activity: "),
    ({"moved": "sideways"}, "moved: expected forward or backward, found 'sideways'"),
    ({"parent": {"stage": "A"}}, "parent: expected a list of conditions, found {'stage': 'A'}"),
    ({"has_file": 3}, "has_file: expected a file name pattern or a list of them, found 3"),
])
def test_new_conditions_are_validated(condition, problem):
    assert validate(condition).startswith(problem)


def test_data_needs_only_what_rules_listening_use(tmp_path):
    rules = ruleset(tmp_path, """
defaults: {connection: amo}
rules:
  - name: gate
    on: {event: stage.changed}
    if: [{open_tasks: {stage: previous, gt: 0}}]
    do: [{add_note: x}]
  - name: report
    on: {event: task.completed}
    if: [{parent: [{has_file: "Отчет*"}]}]
    do: [{add_note: x}]
  - name: quiet
    on: {event: field.changed}
    after: 3 days
    while: [{no_activity: 3 days}]
    do: [{add_note: x}]
""").rules
    assert data_needs(rules, {"stage.changed"}) == {"tasks", "activity"}
    assert data_needs(rules, {"task.completed"}) == {"files", "parent", "activity"}
    assert data_needs(rules, {"message.received"}) == {"activity"}  # a guarded timer: any event may check it
    assert data_needs(rules) == {"tasks", "activity", "files", "parent"}


# --- fan-out and verbs ---------------------------------------------------------------------------

FIELDS = {"ФИО блогера 1": "Бузова", "Услуга 1.1": "Размещение фото", "Площадка 1.1": "Instagram",
          "Услуга 1.2": "Сторис", "Площадка 1.2": "Instagram", "ФИО блогера 2": "Ивлеева",
          "Услуга 2.1": "Видео", "Площадка 2.1": "YouTube", "Бюджет": "100000"}


def test_field_groups_turns_numbered_fields_into_items():
    items = evaluate("f | field_groups({'blogger': 'ФИО блогера {i}', 'service': 'Услуга {i}.{j}', "
                     "'platform': 'Площадка {i}.{j}'})", {"f": FIELDS})
    assert [(i["blogger"], i["platform"], i["service"]) for i in items] == [
        ("Бузова", "Instagram", "Размещение фото"), ("Бузова", "Instagram", "Сторис"), ("Ивлеева", "YouTube", "Видео")]
    assert evaluate("f | field_groups({'blogger': 'ФИО блогера {i}'})", {"f": FIELDS}) == [
        {"blogger": "Бузова", "i": 1}, {"blogger": "Ивлеева", "i": 2}]
    with pytest.raises(TemplateProblem):
        evaluate("f | field_groups('ФИО')", {"f": FIELDS})


def test_for_each_fans_tasks_out_per_blogger_and_service(tmp_path):
    rules = ruleset(tmp_path, """
defaults: {connection: amo, calendar: msk}
rules:
  - name: timing
    on: {event: entity.created, pipeline: Реализация}
    for_each: "entity.fields | field_groups({'blogger': 'ФИО блогера {i}', 'service': 'Услуга {i}.{j}', 'platform': 'Площадка {i}.{j}'})"
    do: [{create_task: {text: "Согласовать тайминг: {{ item.blogger }}, {{ item.platform }}, {{ item.service }}", due: 2 working days}}]
""")
    entity = {"type": "lead", "id": "77", "pipeline": {"id": "7", "name": "Реализация"}, "fields": FIELDS,
              "responsible": {"id": "5"}}
    result = plan(event("entity.created", {}), entity, rules, NOW, MODULES)
    assert [a.args["text"] for a in result.actions] == [
        "Согласовать тайминг: Бузова, Instagram, Размещение фото", "Согласовать тайминг: Бузова, Instagram, Сторис",
        "Согласовать тайминг: Ивлеева, YouTube, Видео"]
    assert len({a.key for a in result.actions}) == 3  # one idempotency key per item


def test_verbs_add_tags_complete_task_copy_entity(tmp_path):
    rules = ruleset(tmp_path, """
defaults: {connection: amo, calendar: msk}
rules:
  - name: lost
    on: {event: stage.changed}
    do:
      - add_tags: ["{{ entity.fields['Причина отказа'] }}", "{{ entity.fields['Нет такого поля'] | default('') }}"]
      - copy_entity: {pipeline: "Работа с потерянными", stage: "Новые", copy_fields: ["Бюджет"],
                      tags: ["{{ entity.fields['Причина отказа'] }}"], fields: {"Откуда": "{{ entity.name }}"}}
      - complete_task: {matching: "^Связаться", result: "Сделка потеряна"}
  - name: close
    on: {event: task.updated}
    do: [{complete_task: "Закрыто автоматически"}]
""")
    entity = {"type": "lead", "id": "77", "name": "Весна", "fields": {"Причина отказа": "Дорого"}}
    tags, copy, close = plan(event("stage.changed", {}), entity, rules, NOW, MODULES).actions
    assert (tags.method, tags.args) == ("change_tags", {"entity": {"type": "lead", "id": "77"}, "add": ["Дорого"], "remove": []})
    assert (copy.method, copy.args) == ("copy_entity", {
        "entity": {"type": "lead", "id": "77"}, "pipeline": "Работа с потерянными", "stage": "Новые",
        "responsible": None, "fields": {"Откуда": "Весна"}, "tags": ["Дорого"], "contacts": True,
        "copy_fields": ["Бюджет"]})
    assert (close.method, close.args) == ("complete_tasks_matching", {
        "entity": {"type": "lead", "id": "77"}, "pattern": "^Связаться", "result_text": "Сделка потеряна"})
    [own] = plan(event("task.updated", {}, ("task", "9")), {"type": "task", "id": "9"}, rules, NOW, MODULES).actions
    assert (own.method, own.args) == ("complete_task", {"task_id": "9", "result_text": "Закрыто автоматически"})


@pytest.mark.parametrize("keep, cancelled", [("false", True), ("true", False)])
def test_keep_timer_leaves_the_guard_to_the_firing(tmp_path, keep, cancelled):
    rules = ruleset(tmp_path, f"""
defaults: {{connection: amo, calendar: msk}}
rules:
  - name: report on the deadline
    on: {{event: [stage.changed, field.changed]}}
    at: {{field: "Дедлайн проекта", time: "10:00"}}
    while: [{{stage: Исполнение}}, {{open_tasks: 0}}]
    keep_timer: {keep}
    do: [{{create_task: "Подготовить и загрузить отчет по проекту"}}]
""")
    entity = {"type": "lead", "id": "77", "stage": {"id": "4", "name": "Исполнение"}, "fields": {},
              "tasks": [{"id": "1", "text": "Разместить", "completed": False}]}
    result = plan(event("file.added", {"file": {"name": "Медиаплан.xlsx"}}), entity, rules, NOW, MODULES)
    assert bool(result.cancels) is cancelled


def test_undo_filter_and_the_undo_option(tmp_path):
    rules = ruleset(tmp_path, """
defaults: {connection: amo, calendar: msk}
rules:
  - name: greet
    on: {event: stage.changed, stage: "Согласование КП", undo: false}
    do: [{create_task: "Согласовать КП"}]
  - name: gate
    on: {event: stage.changed, stage: "Утвержденный проект", undo: false}
    if: [{filled: ["Реквизиты клиента"]}]
    do: []
    otherwise: [{move_to_stage: {stage: "{{ entity.previous_stage.id }}", undo: true}}]
""")
    entity = {"type": "lead", "id": "77", "stage": {"id": "6", "name": "Согласование КП"}, "fields": {}}
    assert [a.rule for a in plan(event("stage.changed", {}), entity, rules, NOW, MODULES).actions] == ["greet"]
    undone = plan(event("stage.changed", {"undo": True}), entity, rules, NOW, MODULES)
    assert undone.actions == [] and ("greet", "crmbridge put the record back here (undo)") in undone.skipped
    refused = {"type": "lead", "id": "77", "stage": {"id": "7", "name": "Утвержденный проект"},
               "previous_stage": {"id": "6", "name": "Согласование КП"}, "fields": {}}
    [back] = plan(event("stage.changed", {}), refused, rules, NOW, MODULES).actions
    assert (back.method, back.args) == ("move_to_stage", {"entity": {"type": "lead", "id": "77"}, "stage": "6",
                                                          "pipeline": None, "undo": True})
    with pytest.raises(ConfigErrors, match="on → undo: expected true or false, found 'no'"):
        ruleset(tmp_path, "rules:\n  - name: x\n    on: {event: stage.changed, undo: 'no'}\n    do: [{add_note: x}]\n")


def test_time_of_day_applies_to_a_unix_timestamp_date_in_at_after_and_every(tmp_path):
    """amoCRM sends a date field as the unix time of its midnight; `time:` sets the time of day on
    that date for `at:` and for the first firing of `every: {field, time, start}` alike (the
    working hours, 10:00-19:00, must not be what puts 11:30 there)."""
    rules = ruleset(tmp_path, """
defaults: {connection: amo, calendar: msk}
rules:
  - name: on the date
    on: {event: stage.changed}
    at: {field: "Дата принятия решения", time: "11:30"}
    do: [{create_task: "Связаться с клиентом"}]
  - name: calls from 3 days after
    on: {event: stage.changed}
    every: {field: "Дата принятия решения", time: "11:30", start: 3 days, interval: 30-60 working minutes}
    do: [{add_note: "звонок"}]
  - name: no time given
    on: {event: stage.changed}
    every: {field: "Дата принятия решения", start: 3 days, interval: 1 day}
    do: [{add_note: "звонок"}]
""")
    midnight = int(datetime(2026, 12, 7, tzinfo=ZoneInfo("Europe/Moscow")).timestamp())
    for value in (midnight, str(midnight), "2026-12-07"):
        entity = {"type": "lead", "id": "77", "fields": {"Дата принятия решения": value}}
        fired = {t.rule: t.fire_at for t in plan(event("stage.changed", {}), entity, rules, NOW, MODULES).timers}
        assert fired["on the date"] == "2026-12-07T11:30:00+03:00", value
        assert fired["calls from 3 days after"] == "2026-12-10T11:30:00+03:00", value
        # without `time:` a timestamp keeps its own moment and a bare date is 09:00
        assert fired["no time given"] == ("2026-12-10T09:00:00+03:00" if value == "2026-12-07"
                                          else "2026-12-10T00:00:00+03:00"), value


def test_the_main_contacts_phone_is_read_only_for_rules_that_use_it(tmp_path):
    """`entity.main_contact.phone` / `.email` need the linked contacts (one more read per contact);
    the main contact's id comes with the deal. A `keep_timer` rule's guard is checked only when the
    timer fires, so no event, not even the one that sets the timer, reads what only it needs."""
    rules = ruleset(tmp_path, """
defaults: {connection: amo, calendar: msk}
rules:
  - name: call the client
    on: {event: stage.changed}
    every: {start: 10 days, interval: 30-60 working minutes}
    while: [{expr: "entity.main_contact.phone"}, {no_activity: 3 days}]
    keep_timer: true
    do: [{add_note: "{{ entity.main_contact.phone }}"}]
  - name: note on the contact
    on: {event: field.changed}
    do: [{add_note: {entity: "contact:{{ entity.main_contact.id }}", text: "x"}}]
""").rules
    # the event that sets the timer does not check the guard either: only what the action reads
    assert data_needs(rules, {"stage.changed"}) == {"contacts"}
    assert data_needs(rules[:1], None) == {"contacts", "activity"}   # the timer firing
    assert data_needs(rules, {"field.changed"}) == set()
    assert data_needs(rules, {"note.added"}) == set()


def test_named_email_templates_are_read_and_checked_at_start_up(tmp_path):
    """`send_email: {template: name}`: templates/email/<name>.subject, .txt (.html) in the
    configuration directory become the action's options at start-up; problems stop the service
    with the rule's or the template file's line."""
    from rules.send_email import load_templates
    mail = tmp_path / "templates" / "email"
    mail.mkdir(parents=True)
    (mail / "warming-1.subject").write_text("{{ entity.name }}: как мы работаем\n", encoding="utf-8")
    (mail / "warming-1.txt").write_text("Здравствуйте!\n\nМенеджер {{ entity.responsible.name }}.\n", encoding="utf-8")
    (mail / "warming-1.html").write_text("<p>{{ entity.name | e }}</p>\n", encoding="utf-8")
    (mail / "broken.subject").write_text("Тема\n", encoding="utf-8")
    (mail / "broken.txt").write_text("Строка 1\n{{ entity.name }\n", encoding="utf-8")
    (mail / "no-body.subject").write_text("Тема\n", encoding="utf-8")
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rules = ruleset(rules_dir, """
defaults: {connection: amo, calendar: msk}
rules:
  - name: warming
    on: {event: stage.changed}
    do:
      - send_email: {connection: mail, to: "a@example.com", template: warming-1}
      - send_email: {connection: mail, to: "a@example.com", template: warming-1, subject: "Своя тема"}
  - name: broken
    on: {event: stage.changed}
    do:
      - send_email: {connection: mail, to: "a@example.com", template: broken}
      - send_email: {connection: mail, to: "a@example.com", template: no-body}
      - send_email: {connection: mail, to: "a@example.com", template: "../secrets"}
      - send_email: {connection: mail, to: "a@example.com", text: "без темы"}
""")
    errors = [str(e).replace(str(tmp_path) + "/", "") for e in load_templates(rules.rules, tmp_path)]
    assert errors == [
        ('templates/email/broken.txt:2: rule "broken": send_email → template \'broken\': template error '
         "(template line 2): unexpected '}'"),
        ("r.yaml:13: rule \"broken\": send_email → template: 'no-body' has no templates/email/no-body.txt in the "
         f"configuration directory {str(tmp_path)!r}"),
        ("r.yaml:14: rule \"broken\": send_email → template: expected a name such as warming-1 (letters, digits, "
         "- _ .), found '../secrets'"),
        'r.yaml:15: rule "broken": send_email → subject: required; expected subject: or template: <name>']
    entity = {"type": "lead", "id": "77", "name": "Весна", "responsible": {"id": "1", "name": "Ольга"}}
    first, second = [a for a in plan(event("stage.changed", {}), entity, rules, NOW, MODULES).actions
                     if a.rule == "warming"]
    assert first.args == {"to": "a@example.com", "subject": "Весна: как мы работаем",
                          "text": "Здравствуйте!\n\nМенеджер Ольга.", "html": "<p>Весна</p>"}  # Jinja2 drops the last newline
    assert second.args["subject"] == "Своя тема" and second.args["text"] == first.args["text"]
