"""The Planfix verbs of playbook B's orders: find_tasks (an order by the line field keeping its
conversation: POST /task/list, complex task filter 101) and process_id (a process by name, cached)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors import planfix
from connectors.base import Connection, PermanentApiError
from tests.fakes_planfix import FakePlanfix


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix()
    server.custom_fields["task"] += [{"id": 301, "name": "Розмова", "type": 0}, {"id": 302, "name": "Сума", "type": 1}]
    server.processes.append({"id": 21, "name": "Продажі"})
    server.statuses[21] = [{"id": 31, "name": "Нове звернення"}, {"id": 38, "name": "Оплачено"}]
    for number, status, lead in ((501, 38, "64950001"), (502, 31, "64950001"), (503, 31, "64950002")):
        server.add("task", {"id": number, "name": f"Замовлення {number}", "processId": 21, "status": {"id": status},
                            "counterparty": {"id": "contact:7"}, "dateTime": {"datetime": "2026-12-08T09:00Z"},
                            "customFieldData": [{"field": {"id": 301}, "value": lead}]})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pf(fake_planfix, redis_db) -> planfix.Client:
    conn = Connection("shop-planfix", "planfix", base_url=f"{fake_planfix.url}/rest", credentials={"token": "t"})
    return planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_find_tasks_lists_the_tasks_of_a_conversation_with_their_status(pf, fake_planfix):
    found = pf.find_tasks("Розмова", "64950001")
    assert [(t["id"], t["stage"]["name"], t["contact"]["id"], t["created"]) for t in found] == [
        ("501", "Оплачено", "7", "2026-12-08T09:00Z"), ("502", "Нове звернення", "7", "2026-12-08T09:00Z")]
    [call] = fake_planfix.received("POST", r"/rest/task/list")
    assert call.body["filters"] == [{"type": 101, "field": 301, "operator": "equal", "value": "64950001"}]
    assert call.body["pageSize"] == 100 and call.body["offset"] == 0


def test_find_tasks_needs_a_line_field(pf):
    with pytest.raises(PermanentApiError, match="'Сума' is not a line"):
        pf.find_tasks("Сума", "1")


def test_process_id_by_name_or_id(pf, fake_planfix):
    assert pf.process_id("Продажі") == 21 and pf.process_id("21") == "21" and pf.process_id(None) is None
    with pytest.raises(PermanentApiError, match="no task process 'Кондитери'"):
        pf.process_id("Кондитери")
