"""Leads as Planfix tasks (attach_to_deal's open_deals and add_deal, E3's new_deals) against the fake
Planfix REST API v2 (tests/fakes_planfix.py). The filters are the documented complex task filters
(planfix-docs REST_API__Сложные_фильтры_задач.md, github.com/electronic777/planfix-docs): 7
"Контрагент" (int or "contact:N"), 108 "Пользовательское поле типа Контакт" ("contact:N", `field`),
24 "Процесс" (process id), operator equal. Open is a status of the type "Активный"
(Задачи/Тип_статуса_задачи.md), given as TaskStatus.isActive by GET /process/task/{id}/statuses."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from connectors import planfix
from connectors.base import Connection, Entity, PermanentApiError
from tests.fakes_planfix import FakePlanfix
from pipeline.steps import STEPS
from tests.steps import run_step, step_context

SALES = 21


def task(number: int, status: int, changed: str, made: str = "2026-12-01T09:00Z", contact: int = 7,
         process: int = SALES, **extra) -> dict:
    return {"id": number, "name": f"Заявка {number}", "processId": process, "status": {"id": status},
            "counterparty": {"id": f"contact:{contact}"}, "dateTime": {"datetime": made},
            "dateOfLastUpdate": {"datetime": changed}, **extra}


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix()
    server.processes.append({"id": SALES, "name": "Продажі"})
    server.statuses[SALES] = [{"id": 31, "name": "Новий лід"}, {"id": 32, "name": "Переговори"},
                              {"id": 38, "name": "Продаж", "isActive": False},
                              {"id": 39, "name": "Відмова", "isActive": False}]
    server.custom_fields["task"] += [{"id": 310, "name": "Клієнт", "type": 10},
                                     {"id": 311, "name": "Джерело", "type": 0}]
    server.add("contact", {"id": 7, "name": "Олена", "phones": [{"number": "+38 (067) 123-45-67", "type": 1}]})
    server.add("task", task(501, 32, "2026-12-05T10:00Z"))                  # open, changed on the 5th
    server.add("task", task(502, 31, "2026-12-07T08:30Z"))                  # open, changed last
    server.add("task", task(503, 38, "2026-12-08T11:00Z"))                  # won: not open
    server.add("task", task(504, 1, "2026-12-08T12:00Z", process=7))       # another process (SMM)
    server.add("task", task(505, 31, "2026-12-08T12:30Z", contact=8))      # someone else's
    server.start()
    yield server
    server.stop()


def client(fake: FakePlanfix, redis_db, **deals) -> planfix.Client:
    options = {"deals": {"process": "Продажі", **deals}}
    conn = Connection("shop-planfix", "planfix", base_url=f"{fake.url}/rest", credentials={"token": "t"},
                      options=options)
    return planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_open_deals_are_the_contacts_tasks_in_an_active_status_of_the_sales_process(fake_planfix, redis_db):
    pf = client(fake_planfix, redis_db)
    assert pf.open_deals("7") == [
        {"type": "task", "id": "502", "name": "Заявка 502", "modified": "2026-12-07T08:30:00+00:00"},
        {"type": "task", "id": "501", "name": "Заявка 501", "modified": "2026-12-05T10:00:00+00:00"}]
    [call] = fake_planfix.received("POST", r"/rest/task/list")
    assert call.body["filters"] == [{"type": 7, "operator": "equal", "value": "contact:7"},
                                    {"type": 24, "operator": "equal", "value": SALES}]
    assert call.body["pageSize"] == 100
    assert [c.path for c in fake_planfix.received("GET")] == ["/rest/process/task", f"/rest/process/task/{SALES}/statuses"]
    pf.open_deals("7")   # the process and its statuses' types are cached
    assert len(fake_planfix.received("GET")) == 2


def test_without_a_process_every_task_of_the_contact_counts(fake_planfix, redis_db):
    conn = Connection("pf", "planfix", base_url=f"{fake_planfix.url}/rest", credentials={"token": "t"})
    pf = planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    assert [d["id"] for d in pf.open_deals("7")] == ["504", "502", "501"]


def test_a_contact_field_instead_of_the_counterparty(fake_planfix, redis_db):
    fake_planfix.tasks[501]["customFieldData"] = [{"field": {"id": 310}, "value": {"id": 9}}]
    pf = client(fake_planfix, redis_db, contact_field="Клієнт")
    assert [d["id"] for d in pf.open_deals("9")] == ["501"]
    call = fake_planfix.received("POST", r"/rest/task/list")[-1]
    assert call.body["filters"][0] == {"type": 108, "field": 310, "operator": "equal", "value": "contact:9"}
    with pytest.raises(PermanentApiError, match="not a Contact field"):
        client(fake_planfix, redis_db, contact_field="Джерело").open_deals("9")


def test_add_deal_makes_a_task_in_the_process_with_the_contact_as_its_client(fake_planfix, redis_db):
    pf = client(fake_planfix, redis_db, status="Новий лід")
    made = pf.add_deal("Заявка з сайту: Олена", "7", {"Джерело": "Tilda"})
    [call] = fake_planfix.received("POST", r"/rest/task/$")
    assert call.body == {"name": "Заявка з сайту: Олена", "processId": SALES, "status": {"id": 31},
                         "counterparty": {"id": "contact:7"},
                         "customFieldData": [{"field": {"id": 311}, "value": "Tilda"}]}
    assert [d["id"] for d in pf.open_deals("7")][0] == str(made)   # made this minute: the most recent


def test_add_deal_on_a_contact_field(fake_planfix, redis_db):
    pf = client(fake_planfix, redis_db, contact_field="Клієнт")
    made = pf.add_deal("Заявка", "9")
    assert fake_planfix.tasks[made]["customFieldData"] == [{"field": {"id": 310}, "value": {"id": 9}}]
    assert "counterparty" not in fake_planfix.tasks[made]
    assert [d["id"] for d in pf.open_deals("9")] == [str(made)]


def test_client_deals_are_the_other_tasks_of_the_tasks_client(fake_planfix, redis_db):
    pf = client(fake_planfix, redis_db)
    assert pf.rule_context(Entity("task", "503"), {"deals"}) == {"client_deals": [
        {"id": "502", "name": "Заявка 502", "created": "2026-12-01T09:00:00+00:00", "open": True},
        {"id": "501", "name": "Заявка 501", "created": "2026-12-01T09:00:00+00:00", "open": True}]}
    assert pf.rule_context(Entity("task", "503"), {"tasks"}) == {}
    fake_planfix.tasks[503].pop("counterparty")
    assert pf.rule_context(Entity("task", "503"), {"deals"}) == {"client_deals": []}


@pytest.mark.parametrize(("deals", "problem"), [
    ({"proces": "Продажі"}, "unknown key 'proces'; expected one of: process, status, contact_field; did you mean \"process\"?"),
    ({"status": "Новий лід"}, "status 'Новий лід' is named: name the process too"),
    ({"process": ["Продажі"]}, "process: expected a name or an id"),
    ("Продажі", "expected a mapping such as"),
])
def test_deal_options_are_checked(deals, problem):
    assert any(problem in text for _, text in planfix.option_problems({"deals": deals}))
    assert planfix.option_problems({"deals": {"process": "Продажі", "status": "Новий лід", "contact_field": 310}}) == []


def test_attach_to_deal_step_comments_on_the_latest_open_task_or_makes_one(fake_planfix, redis_db):
    pf = client(fake_planfix, redis_db)
    result = run_step("attach_to_deal", pf, text="Tilda: ще одне питання", by="phone", value="+380671234567", none_open="new_deal")
    assert result["attached"] == "task:502"
    assert fake_planfix.comments[("task", 502)][0]["description"] == "Tilda: ще одне питання"
    fake_planfix.add("contact", {"id": 8, "name": "Петро", "phones": [{"number": "0501112233", "type": 1}]})
    fake_planfix.tasks.pop(505)
    kwargs = dict(text="Tilda: нова заявка", by="phone", value="+380501112233", none_open="new_deal",
                  deal_title="Заявка: Петро")
    result = STEPS["attach_to_deal"].run(step_context(pf, key="second-person"), **kwargs)
    assert result["created"] and result["attached"].startswith("task:")
    made = int(result["attached"].split(":")[1])
    assert fake_planfix.tasks[made]["counterparty"] == {"id": "contact:8"}
    assert fake_planfix.comments[("task", made)][0]["description"] == "Tilda: нова заявка"
    again = STEPS["attach_to_deal"].run(step_context(pf, key="second-person"), **kwargs)   # a retried job
    assert again["attached"] == result["attached"] and len(fake_planfix.received("POST", r"/rest/task/$")) == 1


def test_a_task_event_reads_its_own_clients_leads_when_a_rule_asks_new_deals(fake_planfix, redis_db):
    """The worker's enrich (pipeline/snapshot.py): on Planfix the task is the lead, so `new_deals`
    reads the task's client's other tasks, not only a parent record's."""
    from connectors.base import Event
    from pipeline import snapshot
    from rules.conditions import check
    from tests.steps import step_context
    pf = client(fake_planfix, redis_db)
    rt = step_context(pf).rt
    event = Event(id="e1", connection="shop-planfix", source="planfix", kind="stage.changed",
                  entity=Entity("task", "503"), data={}, raw={}, occurred_at="2026-12-06T00:00:00+00:00")
    entity = snapshot.enrich(rt, event, {"id": "503", "type": "task"}, {"deals"})
    assert [d["id"] for d in entity["client_deals"]] == ["502", "501"]
    ctx = {"entity": entity, "event": {"occurred_at": event.occurred_at}}
    fake_planfix.tasks[502]["dateTime"] = {"datetime": "2026-12-07T08:00Z"}   # opened after the event
    entity = snapshot.enrich(rt, event, {"id": "503", "type": "task"}, {"deals"})
    assert "1 new deal(s) of the client" in check({"new_deals": 0}, {**ctx, "entity": entity})
    assert snapshot.enrich(rt, event, {"id": "503", "type": "task"}, {"tasks"}) == {"id": "503", "type": "task"}


@pytest.mark.parametrize("applied", [True, False])
def test_a_new_task_answered_500_is_looked_for_before_it_is_made_again(fake_planfix, redis_db, applied):
    """"Applied then answered 5xx": the task made is found among the contact's open ones and used;
    a 500 that made nothing is sent once more. One task either way."""
    fake_planfix.add("contact", {"id": 8, "name": "Петро", "phones": [{"number": "0501112233", "type": 1}]})
    fake_planfix.tasks.pop(505)
    fake_planfix.fail(r"/rest/task/$", 500, {"result": "fail", "code": 0, "error": "Internal error"},
                      applied=applied, method="POST")
    result = run_step("attach_to_deal", client(fake_planfix, redis_db), text="Tilda: заявка", by="phone",
                      value="+380501112233", none_open="new_deal", deal_title="Заявка: Петро")
    mine = [n for n, t in fake_planfix.tasks.items() if (t.get("counterparty") or {}).get("id") == "contact:8"]
    assert len(mine) == 1 and result["attached"] == f"task:{mine[0]}"
    assert [c["description"] for c in fake_planfix.comments[("task", mine[0])]] == ["Tilda: заявка"]
    sent = [c for c in fake_planfix.calls if c.method == "POST" and c.path == "/rest/task/"]
    assert len(sent) == (1 if applied else 2)   # found and used, or (nothing made) sent once more
