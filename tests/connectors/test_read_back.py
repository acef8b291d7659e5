"""Read-back verbs: after an uncertain create (UncertainApiError), the executor asks the CRM whether
the object exists instead of parking the step: find_task / find_note (entity, text, since) → the
object's id, or None. Each is checked against the fakes' list calls in the vendors' wire formats,
including the case that matters most: the create was applied and then answered 500."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from connectors import amocrm, planfix
from connectors.base import Connection, Entity, PermanentApiError, RetryableApiError, UncertainApiError
from tests.conftest import PAYLOADS
from tests.fakes_planfix import FakePlanfix

DUE = "2026-11-25T10:00:00+00:00"


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


# --- amoCRM: GET /api/v4/tasks (filter[entity_*], filter[updated_at][from]); GET /api/v4/leads/{id}/notes ---

@pytest.fixture
def amo(fake_amo, redis_db) -> amocrm.Client:
    fake_amo.add_lead({"id": 31926520, "name": "Brief"})
    conn = Connection(name="amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "t"})
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_amocrm_find_task_settles_a_create_applied_then_answered_500(amo, fake_amo):
    lead, since = Entity("lead", "31926520"), time.time()
    assert amo.find_task(lead, "Call back", since) is None           # nothing yet: send it
    fake_amo.fail(r"^/api/v4/tasks$", 500, {"title": "Internal Server Error", "status": 500}, applied=True)
    with pytest.raises(UncertainApiError):
        amo.create_task(lead, "Call back", DUE)
    [made] = fake_amo.tasks
    assert amo.find_task(lead, "Call back", since) == made            # it was done: record it done
    assert amo.find_task(lead, "Call back", iso(since)) == made       # ISO 8601 works as well
    assert amo.find_task(lead, "Call back later", since) is None      # the text must be the same
    assert amo.find_task(Entity("lead", "1"), "Call back", since) is None   # another record's tasks
    assert amo.find_task(lead, "Call back", since + 3600) is None     # made before the window
    [listed] = [c for c in fake_amo.received("GET", "/api/v4/tasks")][-1:]
    assert listed.query["filter[entity_type]"] == ["leads"] and listed.query["filter[entity_id]"] == ["31926520"]
    assert listed.query["order[created_at]"] == ["desc"] and "filter[updated_at][from]" in listed.query


def test_amocrm_find_note_reads_the_entitys_common_notes(amo, fake_amo):
    lead, since = Entity("lead", "31926520"), time.time()
    other = amo.add_note(lead, "Something else")
    assert amo.find_note(lead, "Client confirmed", since) is None
    note = amo.add_note(lead, "Client confirmed")
    assert amo.find_note(lead, "Client confirmed", since) == note != other
    assert amo.find_note(lead, "Client confirmed", since + 3600) is None
    [listed] = fake_amo.received("GET", "/api/v4/leads/31926520/notes")[-1:]
    assert listed.query["filter[note_type]"] == ["common"] and listed.query["order[id]"] == ["desc"]


def test_amocrm_read_back_errors_raise_as_usual(amo, fake_amo):
    fake_amo.fail(r"^/api/v4/tasks$", 429, {"title": "Too Many Requests", "status": 429}, headers={"Retry-After": "1"})
    with pytest.raises(RetryableApiError):
        amo.find_task(Entity("lead", "31926520"), "Call back", time.time())


# --- Bitrix24: tasks.task.list (UF_CRM_TASK, TITLE, >=CREATED_DATE); crm.timeline.comment.list ---------

def test_bitrix24_find_task_settles_a_create_applied_then_answered_500(b24_with_a_deal):
    client, fake = b24_with_a_deal
    deal, since = Entity("deal", "410"), time.time()
    fake.add_task(title="Call back", ufCrmTask=["D_410"], createdDate="2020-01-01T10:00:00+00:00")  # an old one
    assert client.find_task(deal, "Call back", since) is None
    fake.fail(r"/tasks\.task\.add(\.json)?$", 500,
              {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}, applied=True)
    with pytest.raises(UncertainApiError):
        client.create_task(deal, "Call back", DUE)
    made = max(fake.tasks)
    assert client.find_task(deal, "Call back", since) == made
    assert client.find_task(Entity("deal", "411"), "Call back", since) is None
    assert client.find_task(deal, "Call", since) is None                 # TITLE is a pattern there: exact here
    [call] = fake.method_calls("tasks.task.list")[-1:]
    assert call.body["filter"]["UF_CRM_TASK"] == "D_410" and ">=CREATED_DATE" in call.body["filter"]


def test_bitrix24_find_note_reads_the_timeline_newest_first(b24_with_a_deal):
    client, fake = b24_with_a_deal
    deal, since = Entity("deal", "410"), time.time()
    for i in range(60):    # more than a page (50) of other comments first
        client.add_note(deal, f"Other {i}")
    assert client.find_note(deal, "Paid", since) is None
    note = client.add_note(deal, "Paid")
    assert client.find_note(deal, "Paid", since) == note
    [call] = fake.method_calls("crm.timeline.comment.list")[-1:]
    assert call.body["filter"] == {"ENTITY_ID": 410, "ENTITY_TYPE": "deal"} and call.body["order"] == {"ID": "DESC"}
    assert client.find_note(Entity("lead", "410"), "Paid", since) is None   # ENTITY_TYPE counts
    assert len(fake.method_calls("crm.timeline.comment.list")) == 4   # 2 pages for None, 1 found, 1 for the lead


# --- Planfix: POST /task/list (filter 73 parent task, 5 project); POST /task/{id}/comments/list ----------

@pytest.fixture
def pf(redis_db):
    fake = FakePlanfix().start()
    fake.add("task", json.loads((PAYLOADS / "planfix/api_task_get.json").read_text())["task"])
    conn = Connection(name="pf", type="planfix", base_url=f"{fake.url}/rest", credentials={"token": "PF-TOKEN"})
    yield planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:"), fake
    fake.stop()


def test_planfix_find_task_settles_a_subtask_applied_then_answered_500(pf):
    client, fake = pf
    parent, since = Entity("task", "1042"), time.time()
    assert client.find_task(parent, "Prepare the brief\nwith details", since) is None
    fake.fail(r"^/rest/task/$", 500, {"result": "fail", "code": 0, "error": "Internal error"}, applied=True)
    with pytest.raises(UncertainApiError):
        client.create_task(parent, "Prepare the brief\nwith details", DUE)
    made = max(fake.tasks)
    assert client.find_task(parent, "Prepare the brief\nwith details", since) == made   # by its name, the first line
    assert client.find_task(Entity("task", "1"), "Prepare the brief", since) is None
    assert client.find_task(parent, "Prepare the brief", since + 3600) is None
    [call] = fake.received("POST", "/rest/task/list")[-1:]
    assert call.body["filters"] == [{"type": 73, "operator": "equal", "value": 1042}]
    with pytest.raises(PermanentApiError, match="cannot read back the tasks of a company"):
        client.find_task(Entity("company", "7"), "x", since)


def test_planfix_find_task_on_a_contact_reads_its_tasks_by_counterparty(pf):
    """create_task on a contact makes the contact the task's counterparty; the read-back lists the
    contact's tasks with the filter 7 "Контрагент" (REST_API__Сложные_фильтры_задач.md)."""
    client, fake = pf
    person, since = Entity("contact", "7"), time.time()
    fake.fail(r"^/rest/task/$", 500, {"result": "fail", "code": 0, "error": "Internal error"}, applied=True)
    with pytest.raises(UncertainApiError):
        client.create_task(person, "Передзвонити", DUE)
    made = max(fake.tasks)
    assert client.find_task(person, "Передзвонити", since) == made
    assert client.find_task(Entity("contact", "8"), "Передзвонити", since) is None
    assert fake.received("POST", "/rest/task/list")[-1].body["filters"] == [
        {"type": 7, "operator": "equal", "value": "contact:8"}]


def test_planfix_find_note_reads_comments_newest_first(pf):
    client, fake = pf
    task, since = Entity("task", "1042"), time.time()
    client.add_note(task, "Other <b>one</b>")
    assert client.find_note(task, "Approved & sent", since) is None
    note = client.add_note(task, "Approved & sent")
    assert client.find_note(task, "Approved & sent", since) == note
    assert client.find_note(task, "Approved", since) is None
    [call] = fake.received("POST", "/rest/task/1042/comments/list")[-1:]
    assert call.body["resultOrder"] == "Desc" and "dateTime" in call.body["fields"]
