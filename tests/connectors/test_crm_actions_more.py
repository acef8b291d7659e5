"""set_responsible, delete_entity and notify against the local fakes, in each vendor's wire format:
amoCRM API v4 (PATCH …/{id}), Bitrix24 REST (crm.<type>.update / .delete, im.notify.system.add),
Planfix REST v2 (POST /task|contact/{id})."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from connectors import amocrm, bitrix24, planfix
from connectors.base import Connection, Entity, PermanentApiError
from tests.conftest import PAYLOADS
from tests.fakes_bitrix24 import FakeBitrix24
from tests.fakes_planfix import FakePlanfix

# --- amoCRM --------------------------------------------------------------------------------------


@pytest.fixture
def amo_client(fake_amo, redis_db) -> amocrm.Client:
    conn = Connection(name="agency-amo", type="amocrm", base_url=fake_amo.url,
                      credentials={"token": "T"}, webhook_secret="s")
    fake_amo.add_lead(json.loads((PAYLOADS / "amocrm/api_lead_get.json").read_text()))
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_amo_set_responsible_on_a_contact_by_id_and_refuses_a_task(amo_client, fake_amo):
    amo_client.set_responsible(Entity("contact", "3"), "102525")
    [patch] = fake_amo.received("PATCH", "/api/v4/contacts/3")
    assert patch.body == {"responsible_user_id": 102525}
    with pytest.raises(PermanentApiError, match="works on leads, contacts and companies, not a task"):
        amo_client.set_responsible(Entity("task", "5"), "102525")


def test_amo_client_has_no_delete_or_notify_so_start_up_refuses_them():
    assert not hasattr(amocrm.Client, "delete_entity") and not hasattr(amocrm.Client, "notify")
    assert not hasattr(planfix.Client, "notify")


# --- Bitrix24 ------------------------------------------------------------------------------------

@pytest.fixture
def fake_b24() -> Iterator[FakeBitrix24]:
    server = FakeBitrix24().start()
    server.add("deal", {"ID": "410", "TITLE": "Торт на весілля", "STAGE_ID": "PREPARATION", "CATEGORY_ID": "0",
                        "ASSIGNED_BY_ID": "1"})
    server.add("lead", {"ID": "365", "TITLE": "Заявка с сайта", "STATUS_ID": "NEW", "ASSIGNED_BY_ID": "7"})
    server.add("contact", {"ID": "84", "NAME": "Анна", "LAST_NAME": "Сидорова", "ASSIGNED_BY_ID": "7"})
    yield server
    server.stop()


@pytest.fixture
def b24(fake_b24, redis_db) -> bitrix24.Client:
    conn = Connection(name="shop-b24", type="bitrix24", base_url=fake_b24.base_url,
                      credentials={"webhook": fake_b24.code}, webhook_secret="app-token")
    return bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_b24_set_responsible_by_name_or_id_on_deal_lead_and_contact(b24, fake_b24):
    assert b24.set_responsible(Entity("deal", "410"), "Иван Петренко") is True
    assert b24.set_responsible(Entity("lead", "365"), "1") is True
    assert b24.set_responsible(Entity("contact", "84"), 1) is True
    calls = [(c.path.rsplit("/", 1)[-1], c.body) for c in fake_b24.received("POST", r".*/crm\.\w+\.update\.json")]
    assert calls == [("crm.deal.update.json", {"id": 410, "fields": {"ASSIGNED_BY_ID": 7}}),
                     ("crm.lead.update.json", {"id": 365, "fields": {"ASSIGNED_BY_ID": 1}}),
                     ("crm.contact.update.json", {"id": 84, "fields": {"ASSIGNED_BY_ID": 1}})]
    assert fake_b24.records["deal"][410]["ASSIGNED_BY_ID"] == 7


def test_b24_set_responsible_refuses_an_unknown_user_and_a_task(b24):
    with pytest.raises(PermanentApiError, match="^Bitrix24 has no user 'Nobody'$"):
        b24.set_responsible(Entity("deal", "410"), "Nobody")
    with pytest.raises(PermanentApiError, match="Bitrix24 CRM has no 'task' records"):
        b24.set_responsible(Entity("task", "12"), "1")


def test_b24_delete_entity_and_a_record_already_gone_is_done(b24, fake_b24):
    assert b24.delete_entity(Entity("deal", "410")) == "deleted"
    assert b24.delete_entity(Entity("contact", "84")) == "deleted"
    assert 410 not in fake_b24.records["deal"] and 84 not in fake_b24.records["contact"]
    [call] = fake_b24.method_calls("crm.deal.delete")
    assert call.body == {"id": 410}
    # deleted before (by a person, or by an earlier try whose answer was lost): the documented 400 "Not found"
    assert b24.delete_entity(Entity("deal", "410")) == "gone"
    [missing] = [c for c in fake_b24.received("POST", r".*/crm\.deal\.delete\.json", failed=True) if c.status >= 400]
    assert missing.status == 400


@pytest.mark.parametrize("status, body, text", [
    (400, {"error": "", "error_description": "Access denied"}, "HTTP 400: Access denied"),
    (404, {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"},
     "HTTP 404: ERROR_METHOD_NOT_FOUND: Method not found!"),   # not "the record is gone"
])
def test_b24_delete_entity_keeps_the_vendors_error(b24, fake_b24, status, body, text):
    fake_b24.fail(r"/crm\.lead\.delete", status, body)
    with pytest.raises(PermanentApiError) as exc:
        b24.delete_entity(Entity("lead", "365"))
    assert str(exc.value) == f"POST /crm.lead.delete.json: {text}"
    assert 365 in fake_b24.records["lead"]


def test_b24_notify_in_ukrainian_to_a_user_by_name(b24, fake_b24):
    text = "Зустріч через годину: «Торт на весілля» 🎉"
    assert b24.notify("Иван Петренко", text) == fake_b24.notifications[0]["id"]
    [call] = fake_b24.method_calls("im.notify.system.add")
    assert call.body == {"USER_ID": 7, "MESSAGE": text}


# --- Planfix -------------------------------------------------------------------------------------

@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix().start()
    yield server
    server.stop()


@pytest.fixture
def pf(fake_planfix, redis_db) -> planfix.Client:
    conn = Connection(name="agency-pf", type="planfix", base_url=f"{fake_planfix.url}/rest",
                      credentials={"token": "PF-TOKEN"}, webhook_secret="s")
    fake_planfix.add("task", json.loads((PAYLOADS / "planfix/api_task_get.json").read_text())["task"])
    fake_planfix.add("contact", json.loads((PAYLOADS / "planfix/api_contact_get.json").read_text())["contact"])
    return planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_pf_set_responsible_makes_the_user_the_tasks_one_assignee(pf, fake_planfix):
    assert pf.set_responsible(Entity("task", "1042"), "Иван Петренко") == "done"
    [call] = fake_planfix.received("POST", "/rest/task/1042")
    assert call.body == {"assignees": {"users": [{"id": "user:6"}]}}
    assert fake_planfix.tasks[1042]["assignees"] == {"users": [{"id": "user:6"}]}
    assert pf.set_responsible(Entity("contact", "318"), "5") == "done"
    [call] = fake_planfix.received("POST", "/rest/contact/318")
    assert call.body == {"supervisors": {"users": [{"id": "user:5"}]}}


def test_pf_set_responsible_refuses_an_unknown_user(pf, fake_planfix):
    with pytest.raises(PermanentApiError, match="^Planfix has no user 'Nobody'$"):
        pf.set_responsible(Entity("task", "1042"), "Nobody")
    assert fake_planfix.received("POST", "/rest/task/1042") == []


def test_pf_delete_entity_marks_a_task_or_contact_deleted(pf, fake_planfix):
    assert pf.delete_entity(Entity("task", "1042")) == "done"
    assert pf.delete_entity(Entity("contact", "318")) == "done"
    assert fake_planfix.tasks[1042]["isDeleted"] is True and fake_planfix.contacts[318]["isDeleted"] is True
    [call] = fake_planfix.received("POST", "/rest/task/1042")
    assert call.body == {"isDeleted": True}


@pytest.mark.parametrize("status, body", [
    (400, {"result": "fail", "code": 1000, "error": "Task not exist"}),
    (400, {"result": "fail", "code": 2000, "error": "Contact not exist"}),
    (404, {"result": "fail", "error": "Not found"}),
])
def test_pf_delete_entity_of_a_record_already_gone_is_done(pf, fake_planfix, status, body):
    kind = "contact" if body.get("code") == 2000 else "task"
    fake_planfix.fail(rf"/rest/{kind}/77$", status, body)
    assert pf.delete_entity(Entity(kind, "77")) == "gone"


def test_pf_delete_entity_keeps_the_vendors_error(pf, fake_planfix):
    fake_planfix.fail(r"/rest/task/1042$", 403, {"result": "failure", "code": 5, "message": "Access denied"})
    with pytest.raises(PermanentApiError) as exc:
        pf.delete_entity(Entity("task", "1042"))
    assert str(exc.value) == "POST /task/1042: HTTP 403: Planfix code 5: Access denied"
    with pytest.raises(PermanentApiError, match="acts on tasks and contacts, not on a project"):
        pf.delete_entity(Entity("project", "77"))
