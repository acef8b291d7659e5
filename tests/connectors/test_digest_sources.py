"""The digest sources (send_digest, playbook D7) of amoCRM and Planfix, read across every page of
large accounts: amoCRM's deals without an open task (250 a page, `page`), Planfix's overdue tasks
(`offset`/`pageSize` 100). Bitrix24's are driven end to end in tests/playbooks/test_bitrix24_robots_digest.py."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors import amocrm, planfix
from connectors.base import Connection
from tests.fakes import FakeAmo
from tests.fakes_planfix import FakePlanfix


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix().start()
    yield server
    server.stop()


def test_amocrm_deals_without_task_reads_every_page_of_leads_and_tasks(fake_amo: FakeAmo, redis_db):
    fake_amo.users = [{"id": 938348, "name": "Ольга Смирнова"}, {"id": 102525, "name": "Иван Петров"}]
    for n in range(600):
        lead_id = 40000 + n
        status = 142 if n == 598 else 143 if n == 599 else 10216993
        fake_amo.add_lead({"id": lead_id, "name": f"Сделка {lead_id}", "status_id": status, "pipeline_id": 2116,
                           "responsible_user_id": 938348 if n % 2 else 102525, "updated_at": 1764900000 + n})
        if n not in (5, 250, 597, 598, 599):
            fake_amo.tasks[n + 1] = {"id": n + 1, "text": "Позвонить", "is_completed": False,
                                     "complete_till": 1765000000, "responsible_user_id": 938348,
                                     "entity_type": "leads", "entity_id": lead_id}
    fake_amo.tasks[9999] = {"id": 9999, "text": "Сделано", "is_completed": True, "complete_till": 1765000000,
                            "responsible_user_id": 938348, "entity_type": "leads", "entity_id": 40000 + 250}
    conn = Connection(name="agency-amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "T"},
                      webhook_secret="s")
    found = amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:").deals_without_task()

    assert [(d["type"], d["id"], d["responsible"]["name"]) for d in found] == [
        ("lead", "40005", "Ольга Смирнова"), ("lead", "40250", "Иван Петров"), ("lead", "40597", "Ольга Смирнова")]
    leads = fake_amo.received("GET", "/api/v4/leads")
    assert [(c.query["page"], c.query["limit"]) for c in leads] == [(["1"], ["250"]), (["2"], ["250"]), (["3"], ["250"])]
    tasks = fake_amo.received("GET", "/api/v4/tasks")
    assert [c.query["page"] for c in tasks] == [["1"], ["2"], ["3"]]
    assert all(c.query["filter[is_completed]"] == ["0"] and c.query["filter[entity_type]"] == ["leads"] for c in tasks)


def _task(task_id: int, status: tuple[int, str], end: dict | None, user: str = "user:5") -> dict:
    """A task as POST /task/list answers it (planfix_api_task_get_response.json's fields)."""
    item = {"id": task_id, "name": f"Задача {task_id}", "status": {"id": status[0], "name": status[1]}, "processId": 7,
            "assignees": {"users": [{"id": user, "name": "Олена Коваленко" if user == "user:5" else "Иван Петренко"}]},
            "project": {"id": 31, "name": "SMM Зерно"}}
    if end is not None:
        item["endDateTime"] = end
    return item


def test_planfix_overdue_tasks_reads_every_page_and_skips_closed_and_future_ones(fake_planfix: FakePlanfix, redis_db):
    in_work, done = (2, "В роботі"), (3, "Завершена")
    for n in range(520):
        fake_planfix.add("task", _task(1000 + n, in_work, {"date": "20-12-2026", "time": "18:00",
                                                          "datetime": "2026-12-20T16:00Z"}))
    fake_planfix.add("task", _task(1003, in_work, {"date": "02-12-2026", "time": "12:00", "datetime": "2026-12-02T10:00Z"}))
    fake_planfix.add("task", _task(1150, in_work, {"date": "04-12-2026"}, user="user:6"))     # a day: past at its end
    fake_planfix.add("task", _task(1229, done, {"date": "01-12-2026", "time": "09:00", "datetime": "2026-12-01T07:00Z"}))
    fake_planfix.add("task", _task(1228, in_work, {"date": "07-12-2026"}))                    # today: not yet
    fake_planfix.add("task", _task(1227, in_work, None))                                      # no deadline
    conn = Connection(name="agency-pf", type="planfix", base_url=f"{fake_planfix.url}/rest",
                      credentials={"token": "PF"}, webhook_secret="s", options={"timezone": "Europe/Kyiv"})
    found = planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:").overdue_tasks("2026-12-07T09:00:00+02:00")

    assert [(t["id"], t["due"], t["responsible"]["name"], t["parent"]) for t in found] == [
        ("1003", "2026-12-02T10:00:00+00:00", "Олена Коваленко", {"type": "project", "id": "31"}),
        ("1150", "2026-12-05T00:00:00+02:00", "Иван Петренко", {"type": "project", "id": "31"})]
    bodies = [c.body for c in fake_planfix.received("POST", "/rest/task/list")]
    assert [(b["offset"], b["pageSize"]) for b in bodies] == [(n, 100) for n in range(0, 600, 100)]
