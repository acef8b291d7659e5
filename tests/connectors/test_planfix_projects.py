"""The start_next_task and track_time steps on the Planfix client's verbs, and its date fields,
against the fake Planfix REST API and the real Redis."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors import planfix
from connectors.base import Connection, Entity
from rules.fill_from_form import _text
from tests.fakes_planfix import FakePlanfix
from tests.steps import run_step

ORDER = {"id": 130, "name": "Порядок", "type": 1}
HOURS = {"id": 131, "name": "Витрачено, год", "type": 1}


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix()
    server.custom_fields["task"] += [dict(ORDER), dict(HOURS)]
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pf(fake_planfix, redis_db) -> planfix.Client:
    conn = Connection(name="agency-pf", type="planfix", base_url=f"{fake_planfix.url}/rest",
                      credentials={"token": "PF-TOKEN"}, webhook_secret="s")
    return planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def a_task(number: int, status: int, project: int | None = 77, order: int | None = None) -> dict:
    item = {"id": number, "name": f"Задача {number}", "status": {"id": status}, "processId": 7,
            "customFieldData": [] if order is None else [{"field": dict(ORDER), "value": order}]}
    if project:
        item["project"] = {"id": project}
    return item


def start(client: planfix.Client, task: str, **args) -> dict:
    return run_step("start_next_task", client, Entity("task", task), status="В роботі", **args)


def test_without_an_order_field_the_next_task_is_the_next_number(pf, fake_planfix):
    for number, status in ((500, 3), (501, 2), (502, 1), (503, 1)):
        fake_planfix.add("task", a_task(number, status))
    # 501 is already in work: the next one is 501 and it is not started again
    assert start(pf, "500") == {"next": "501", "reason": "already В роботі"}
    assert start(pf, "501", due="2026-12-02T15:00:00+00:00") == {"next": "502", "name": "Задача 502", "outcome": "done"}
    [started] = fake_planfix.received("POST", "/rest/task/502")
    assert started.body == {"status": {"id": 2}, "endDateTime": {"datetime": "2026-12-02T15:00Z"}}


def test_ordered_tasks_come_before_unordered_ones_and_a_named_executor_is_set(pf, fake_planfix):
    fake_planfix.add("task", a_task(600, 3, order=1))
    fake_planfix.add("task", a_task(601, 1))            # no order: after every ordered task
    fake_planfix.add("task", a_task(602, 1, order=7))
    result = start(pf, "600", order_field="Порядок", responsible="Иван Петренко")
    assert result["next"] == "602"
    [started] = fake_planfix.received("POST", "/rest/task/602")
    assert started.body == {"status": {"id": 2}, "assignees": {"users": [{"id": "user:6"}]}}


def test_a_task_outside_a_project_starts_nothing(pf, fake_planfix):
    fake_planfix.add("task", a_task(700, 3, project=None))
    assert start(pf, "700") == {
        "next": None, "reason": "task 700 is not in a project"}
    assert fake_planfix.received("POST", "/rest/task/list") == []


def test_track_time_adds_periods_counts_each_change_once_and_rewrites_on_a_rerun(pf, fake_planfix):
    task = Entity("task", "800")
    fake_planfix.add("task", a_task(800, 2))

    def change(counting: bool, at: str, key: str) -> dict:
        return run_step("track_time", pf, task, counting=counting, at=at, change=key, field="Витрачено, год")

    assert change(True, "2026-11-24T08:00:00+00:00", "c1")["open_since"] == "2026-11-24T08:00:00+00:00"
    assert change(True, "2026-11-24T08:30:00+00:00", "c2")["open_since"] == "2026-11-24T08:00:00+00:00"
    assert change(False, "2026-11-24T09:15:00+00:00", "c3") == {
        "total_hours": 1.25, "open_since": None, "closed": True, "repeat": False}
    # the same change again (a job re-run after its call): the same total is written again, no more
    assert change(False, "2026-11-24T09:15:00+00:00", "c3")["total_hours"] == 1.25
    assert change(True, "2026-11-24T09:00:00+00:00", "c4")["open_since"] is None    # older than the last seen
    assert change(True, "2026-11-24T10:00:00+00:00", "c5")["open_since"] == "2026-11-24T10:00:00+00:00"
    assert change(False, "2026-11-24T10:20:00+00:00", "c6")["total_hours"] == 1.58
    writes = [d["value"] for c in fake_planfix.received("POST", "/rest/task/800") for d in c.body["customFieldData"]]
    assert writes == [1.25, 1.25, 1.58]
    assert all(d["field"] == {"id": HOURS["id"]} for c in fake_planfix.received("POST", "/rest/task/800")
               for d in c.body["customFieldData"])


def test_date_fields_are_read_as_iso_dates(pf, fake_planfix):
    due = {"id": 132, "name": "Оплачено до", "type": 3}
    fake_planfix.custom_fields["task"].append(due)
    item = a_task(900, 1)
    item["customFieldData"] = [{"field": due, "value": {"date": "15-12-2026"}},
                               {"field": dict(ORDER), "value": {"date": "28-11-2025", "time": "19:00",
                                                                "datetime": "2025-11-28T17:00Z"}}]
    fake_planfix.add("task", item)
    fields = pf.get_entity(Entity("task", "900"))["fields"]
    assert fields == {"Оплачено до": "2026-12-15", "Порядок": "2025-11-28T17:00:00+00:00"}


def test_form_answers_as_field_text():
    assert _text(["Instagram", "Facebook"], ", ") == "Instagram, Facebook"
    assert _text([["Пн", "Ср"], ["Пт"]], ", ") == "Пн, Ср\nПт"          # a checkbox grid: a row a line
    assert _text("  Кав'ярні ", ", ") == "Кав'ярні"
    assert _text(None, ", ") == ""
