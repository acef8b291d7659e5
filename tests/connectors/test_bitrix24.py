"""Bitrix24: documented event bodies → Events, and the REST client against a local fake portal."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest
import requests

from connectors import bitrix24
from connectors.base import (BadPayload, Connection, Entity, PermanentApiError, RawWebhook,
                             RetryableApiError, Unauthorized)
from tests.conftest import PAYLOADS, raw
from tests.fakes_bitrix24 import FakeBitrix24

APP_TOKEN = "51856fefc120afa4b628cc82d3935cce"  # auth[application_token] of the docs' app samples
CONN = Connection(name="shop-b24", type="bitrix24", webhook_secret=APP_TOKEN)
FORM = "application/x-www-form-urlencoded"


def doc(name: str) -> dict:
    return json.loads((PAYLOADS / "bitrix24" / name).read_text())


# --- webhooks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind, entity, data", [
    ("lead_add_2018.form", "entity.created", ("lead", "365"), {}),
    ("deal_add_outgoing_webhook.form", "entity.created", ("deal", "7405"), {}),
    ("deal_update.form", "entity.updated", ("deal", "759"), {"needs_snapshot_diff": True}),
    ("deal_delete.form", "entity.deleted", ("deal", "1765"), {}),
    ("lead_update.form", "entity.updated", ("lead", "1000983"), {"needs_snapshot_diff": True}),
    ("contact_add.form", "entity.created", ("contact", "89"), {}),
    ("contact_update.form", "entity.updated", ("contact", "82"), {"needs_snapshot_diff": True}),
    ("task_add.form", "task.created", ("task", "123"), {}),
    ("task_update.form", "task.updated", ("task", "123"), {"needs_snapshot_diff": True}),
    ("activity_add.form", "entity.created", ("activity", "999"), {}),
])
def test_documented_events_parse(name, kind, entity, data):
    [event] = bitrix24.parse(raw(f"bitrix24/{name}"), CONN)
    assert (event.kind, event.entity, event.data) == (kind, Entity(*entity), data)
    assert (event.source, event.connection) == ("bitrix24", "shop-b24")
    ts = int(event.raw["ts"])
    assert event.occurred_at == datetime.fromtimestamp(ts, timezone.utc).isoformat()


def test_secrets_in_auth_are_not_kept_with_the_event():
    [event] = bitrix24.parse(raw("bitrix24/deal_update.form"), CONN)
    assert event.raw["auth"] == {"domain": "some-domain.bitrix24.com",
                                 "member_id": "a223c6b3710f85df22e9377d6c4f7553"}
    assert event.raw["data"] == {"FIELDS": {"ID": "759"}}
    assert APP_TOKEN not in json.dumps(event.to_dict())


def test_event_ids_are_stable_and_distinct():
    first = bitrix24.parse(raw("bitrix24/task_update.form"), CONN)[0]
    again = bitrix24.parse(raw("bitrix24/task_update.form"), CONN)[0]
    added = bitrix24.parse(raw("bitrix24/task_add.form"), CONN)[0]  # same task, same ts, other event
    other_conn = bitrix24.parse(raw("bitrix24/task_update.form"), Connection("b", "bitrix24"))[0]
    assert first.id == again.id
    assert len({first.id, added.id, other_conn.id}) == 3


@pytest.mark.parametrize("body, reason", [
    (b"data%5BFIELDS%5D%5BID%5D=1", "no Bitrix24 event name (expected event=ONCRM\u2026&data[FIELDS][ID]=\u2026)"),
    (b"event=ONCRMINVOICEADD&data%5BFIELDS%5D%5BID%5D=1", "unsupported Bitrix24 event 'ONCRMINVOICEADD'"),
    (b"event=ONCRMDEALUPDATE&ts=1", "ONCRMDEALUPDATE has no data[FIELDS][ID]"),
    (b"event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=", "ONCRMDEALUPDATE has no data[FIELDS][ID]"),
    (b"event=ONTASKADD&data%5BFIELDS_BEFORE%5D=undefined", "ONTASKADD has no data[FIELDS_AFTER][ID]"),
    (b"event=ONTASKUPDATE&data%5BFIELDS_BEFORE%5D%5BID%5D=5", "ONTASKUPDATE has no data[FIELDS_AFTER][ID]"),
    (b"\xff", "body is not UTF-8 (byte 0)"),
])
def test_bad_bodies_give_one_line_reasons(body, reason):
    with pytest.raises(BadPayload) as exc:
        bitrix24.parse(RawWebhook({}, FORM, body), CONN)
    assert str(exc.value) == reason


def test_event_names_compare_case_insensitively():
    body = b"event=onCrmDealUpdate&data%5BFIELDS%5D%5BID%5D=5&ts=1700000000"
    [event] = bitrix24.parse(RawWebhook({}, FORM, body), CONN)
    assert (event.kind, event.entity) == ("entity.updated", Entity("deal", "5"))


def test_verify_accepts_the_application_token():
    bitrix24.verify(raw("bitrix24/deal_update.form"), CONN)
    outgoing = Connection("hook", "bitrix24", webhook_secret="jvh9y1ulvt2m6k5or90v9mg8nn32ozas")
    bitrix24.verify(raw("bitrix24/deal_add_outgoing_webhook.form"), outgoing)


@pytest.mark.parametrize("conn, body", [
    (Connection("c", "bitrix24", webhook_secret="other-token"), None),
    (Connection("c", "bitrix24", webhook_secret=None), None),
    (CONN, b"event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=1"),
    (CONN, b"\xff\xfe"),
    (CONN, b"auth=" + APP_TOKEN.encode()),
    (Connection("c", "bitrix24", webhook_secret=APP_TOKEN, options={"domain": "evil.bitrix24.com"}), None),
    (Connection("c", "bitrix24", webhook_secret=APP_TOKEN, options={"member_id": "0000"}), None),
], ids=["wrong-token", "no-secret-configured", "no-auth", "not-utf8", "auth-not-a-map", "other-domain",
        "other-member"])
def test_verify_refuses(conn, body):
    webhook = raw("bitrix24/deal_update.form") if body is None else RawWebhook({}, FORM, body)
    with pytest.raises(Unauthorized):
        bitrix24.verify(webhook, conn)


def test_verify_checks_domain_and_member_id_when_configured():
    conn = Connection("c", "bitrix24", webhook_secret=APP_TOKEN, options={
        "domain": "some-domain.bitrix24.com", "member_id": "a223c6b3710f85df22e9377d6c4f7553"})
    bitrix24.verify(raw("bitrix24/deal_update.form"), conn)


# --- the REST client ------------------------------------------------------------------------------

@pytest.fixture
def fake_b24() -> Iterator[FakeBitrix24]:
    server = FakeBitrix24().start()
    server.add("deal", doc("api_deal_get.json")["result"])  # deal 410, stage PREPARATION, funnel 0
    server.add("contact", {"ID": "84", "NAME": "Анна", "LAST_NAME": "Сидорова", "ASSIGNED_BY_ID": "7",
                           "UF_CRM_1725370000001": "61"})
    server.add("company", {"ID": "9", "TITLE": "ООО «Ромашка»", "ASSIGNED_BY_ID": "1"})
    server.add("lead", {"ID": "365", "TITLE": "Заявка с сайта", "STATUS_ID": "NEW", "ASSIGNED_BY_ID": "7"})
    yield server
    server.stop()


def connection(fake: FakeBitrix24, **creds: str) -> Connection:
    return Connection(name="shop-b24", type="bitrix24", base_url=fake.base_url,
                      credentials=creds or {"webhook": fake.code}, webhook_secret=APP_TOKEN)


@pytest.fixture
def b24(fake_b24, redis_db) -> bitrix24.Client:
    return bitrix24.Client(connection(fake_b24), store=redis_db, key_prefix="crmbridge-test:")


def test_the_fake_answers_in_the_documented_shapes(fake_b24):
    url = f"{fake_b24.base_url}/{fake_b24.code}"
    fake_b24.add_task(id=8017, title="Task Example", responsibleId="547")
    answers = {
        "crm.deal.get": (requests.post(f"{url}/crm.deal.get.json", json={"ID": 410}), "api_deal_get.json"),
        "crm.status.list": (requests.post(f"{url}/crm.status.list", json={"filter": {"ENTITY_ID": "DEAL_STAGE"}}),
                            "api_status_list.json"),
        "crm.category.list": (requests.post(f"{url}/crm.category.list.json", json={"entityTypeId": 2}),
                              "api_category_list.json"),
        "tasks.task.get": (requests.post(f"{url}/tasks.task.get.json", json={"taskId": 8017}), "api_task_get.json"),
        "batch": (requests.post(f"{url}/batch.json", json={"halt": 0, "cmd": {
            "a": "crm.deal.get?ID=410", "b": "crm.status.list?filter%5BENTITY_ID%5D=STATUS"}}),
            "api_batch_response.json"),
    }
    for method, (resp, sample) in answers.items():
        ours, theirs = resp.json(), doc(sample)
        assert resp.status_code == 200 and set(ours) == set(theirs), method
        assert set(ours["time"]) <= set(theirs["time"]) | {"operating", "operating_reset_at"}, method
    assert set(answers["crm.status.list"][0].json()["result"][0]) == set(doc("api_status_list.json")["result"][0])
    assert set(answers["crm.category.list"][0].json()["result"]["categories"][0]) == set(
        doc("api_category_list.json")["result"]["categories"][0])
    assert set(answers["batch"][0].json()["result"]) == set(doc("api_batch_response.json")["result"])
    by_get = requests.get(f"{url}/crm.deal.get", params={"ID": 410})  # GET, without .json, works too
    assert by_get.status_code == 200 and by_get.json()["result"]["TITLE"] == "New Deal #1"


def test_get_deal_normalizes_with_cyrillic_names(b24, fake_b24):
    deal = b24.get_entity(Entity("deal", "410"))
    assert deal["name"] == "New Deal #1" and deal["price"] == "1000000.00"
    assert deal["stage"] == {"id": "PREPARATION", "name": "Подготовка документов"}
    assert deal["pipeline"] == {"id": "0", "name": "Общая"}
    assert deal["responsible"] == {"id": "1", "name": "Ольга Коваленко"}
    assert deal["fields"] == {"Комментарий клиента": "Hello world!"}
    assert (deal["contacts"], deal["company"], deal["tags"]) == (["84"], {"id": "9"}, [])
    [call] = fake_b24.method_calls("crm.deal.get")
    assert call.method == "POST" and call.path.endswith("/rest/1/x7k2webhookcode/crm.deal.get.json")
    assert call.body == {"id": 410} and call.headers["Content-Type"] == "application/json"


def test_metadata_is_fetched_once_through_batch_and_cached(b24, fake_b24, redis_db):
    b24.get_entity(Entity("deal", "410"))
    b24.get_entity(Entity("deal", "410"))
    assert len(fake_b24.method_calls("crm.category.list")) == 1
    [batch] = fake_b24.method_calls("batch")
    assert batch.body["cmd"] == {"c0": "crm.status.list?filter%5BENTITY_ID%5D=DEAL_STAGE",
                                 "c3": "crm.status.list?filter%5BENTITY_ID%5D=DEAL_STAGE_3",
                                 "lead": "crm.status.list?filter%5BENTITY_ID%5D=STATUS"}
    assert len(fake_b24.method_calls("user.get")) == len(fake_b24.method_calls("crm.deal.fields")) == 1
    assert redis_db.exists("crmbridge-test:meta:shop-b24:stages")


def test_get_lead_contact_company_and_enumeration_text(b24):
    lead = b24.get_entity(Entity("lead", "365"))
    assert lead["stage"] == {"id": "NEW", "name": "Не обработан"} and "pipeline" not in lead
    assert lead["responsible"] == {"id": "7", "name": "Иван Петренко"}
    contact = b24.get_entity(Entity("contact", "84"))
    assert contact["name"] == "Анна Сидорова" and contact["fields"] == {"Классификация": "Клиент"}
    company = b24.get_company("9")
    assert (company["name"], company["responsible"]["name"]) == ("ООО «Ромашка»", "Ольга Коваленко")


def test_get_task_and_missing_task(b24, fake_b24):
    fake_b24.add_task(id=77, title="Позвонить клиенту", responsibleId="7", status="5", ufCrmTask=["D_410"],
                      deadline="2026-11-25T10:00:00+03:00")
    task = b24.get_entity(Entity("task", "77"))
    assert task["name"] == "Позвонить клиенту" and task["completed"] is True and task["bindings"] == ["D_410"]
    assert task["responsible"] == {"id": "7", "name": "Иван Петренко"}
    [call] = fake_b24.method_calls("tasks.task.get")
    assert call.body == {"taskId": 77, "select": bitrix24.TASK_SELECT}
    assert b24.get_entity(Entity("task", "78")) is None  # Bitrix24 answers "result": []


def test_missing_deal_is_a_permanent_error_with_the_vendors_text(b24):
    with pytest.raises(PermanentApiError, match=r"POST /crm.deal.get.json: HTTP 400: Not found$"):
        b24.get_entity(Entity("deal", "1"))


def test_move_to_stage_by_cyrillic_name_in_the_deals_funnel(b24, fake_b24):
    assert b24.move_to_stage(Entity("deal", "410"), "В работе") is True
    [update] = fake_b24.method_calls("crm.deal.update")
    assert update.body == {"id": 410, "fields": {"STAGE_ID": "EXECUTING"}}
    assert fake_b24.records["deal"][410]["STAGE_ID"] == "EXECUTING"


def test_a_name_in_several_funnels_means_the_deals_own(b24, fake_b24):
    b24.move_to_stage(Entity("deal", "410"), "Новая")  # "Новая" is in both funnels; the deal is in 0
    [update] = fake_b24.method_calls("crm.deal.update")
    assert update.body["fields"] == {"STAGE_ID": "NEW"}
    assert len(fake_b24.method_calls("crm.deal.get")) == 1


def test_move_to_another_funnel_uses_crm_item_update(b24, fake_b24):
    assert b24.move_to_stage(Entity("deal", "410"), "Подготовка контента", pipeline="Реализация") is True
    [update] = fake_b24.method_calls("crm.item.update")
    assert update.body == {"entityTypeId": 2, "id": 410, "fields": {"categoryId": 3, "stageId": "C3:PREPARATION"}}
    assert fake_b24.method_calls("crm.deal.update") == []
    assert (fake_b24.records["deal"][410]["CATEGORY_ID"], fake_b24.records["deal"][410]["STAGE_ID"]) == (
        "3", "C3:PREPARATION")


def test_move_within_the_named_current_funnel_uses_crm_deal_update(b24, fake_b24):
    b24.move_to_stage(Entity("deal", "410"), "WON", pipeline="0")
    [update] = fake_b24.method_calls("crm.deal.update")
    assert update.body == {"id": 410, "fields": {"STAGE_ID": "WON"}}
    assert fake_b24.method_calls("crm.item.update") == []


def test_new_stage_refreshes_the_cache_once(b24, fake_b24):
    b24.stages()
    fake_b24.statuses["DEAL_STAGE"].append({"STATUS_ID": "UC_Q1W2E3", "NAME": "Счёт выставлен"})
    b24.move_to_stage(Entity("deal", "410"), "Счёт выставлен")
    assert fake_b24.method_calls("crm.deal.update")[0].body["fields"] == {"STAGE_ID": "UC_Q1W2E3"}
    assert len(fake_b24.method_calls("batch")) == 2


def test_unknown_stage_and_unknown_type_are_permanent(b24):
    with pytest.raises(PermanentApiError, match="Bitrix24 has no deal stage 'Nowhere' in funnel 'Реализация'"):
        b24.move_to_stage(Entity("deal", "410"), "Nowhere", pipeline="Реализация")
    with pytest.raises(PermanentApiError, match="stages belong to deals and leads, not contacts"):
        b24.move_to_stage(Entity("contact", "84"), "Новая")


def test_move_lead_sets_status_id(b24, fake_b24):
    b24.move_to_stage(Entity("lead", "365"), "В работе")  # a deal stage has that name too: leads use STATUS
    [update] = fake_b24.method_calls("crm.lead.update")
    assert update.body == {"id": 365, "fields": {"STATUS_ID": "IN_PROCESS"}}


def test_set_fields_by_label_code_and_list_text(b24, fake_b24):
    b24.set_fields(Entity("deal", "410"), {"Дата оплаты": "2026-11-25", "Канал": "Сайт", "TITLE": "Сделка №1"})
    [update] = fake_b24.method_calls("crm.deal.update")
    assert update.body == {"id": 410, "fields": {"UF_CRM_1725365197310": "2026-11-25",
                                                 "UF_CRM_1725365201104": "46", "TITLE": "Сделка №1"}}
    deal = b24.get_entity(Entity("deal", "410"))
    assert deal["fields"]["Канал"] == "Сайт" and deal["name"] == "Сделка №1"


def test_unknown_field_is_permanent_after_one_refresh(b24, fake_b24):
    with pytest.raises(PermanentApiError, match="Bitrix24 has no deal field 'Нет такого'"):
        b24.set_fields(Entity("deal", "410"), {"Нет такого": 1})
    assert len(fake_b24.method_calls("crm.deal.fields")) == 2
    assert fake_b24.method_calls("crm.deal.update") == []


def test_update_contact_is_set_fields_on_a_contact(b24, fake_b24):
    assert b24.update_contact("84", {"Ответственный": 1, "Классификация": "Подрядчик"}) is True
    [update] = fake_b24.method_calls("crm.contact.update")
    assert update.body == {"id": 84, "fields": {"ASSIGNED_BY_ID": 1, "UF_CRM_1725370000001": "62"}}


def test_create_task_binds_the_deal_its_contact_and_company(b24, fake_b24):
    due = datetime(2026, 11, 25, 10, tzinfo=timezone.utc).isoformat()
    task_id = b24.create_task(Entity("deal", "410"), "Получить обратную связь", due, responsible="Иван Петренко",
                              bind=[{"type": "contact", "id": "84"}, Entity("company", "9"), "D_410"])
    [call] = fake_b24.method_calls("tasks.task.add")
    assert call.body == {"fields": {"TITLE": "Получить обратную связь", "DEADLINE": "2026-11-25T10:00:00+00:00",
                                    "RESPONSIBLE_ID": 7, "UF_CRM_TASK": ["D_410", "C_84", "CO_9"]}}
    assert fake_b24.tasks[task_id]["ufCrmTask"] == ["D_410", "C_84", "CO_9"]


def test_create_task_without_responsible_goes_to_the_webhook_user(b24, fake_b24):
    b24.create_task(Entity("lead", "365"), "Связаться", "2026-11-25T10:00:00+03:00")
    [call] = fake_b24.method_calls("tasks.task.add")
    assert call.body["fields"]["RESPONSIBLE_ID"] == 1 and call.body["fields"]["UF_CRM_TASK"] == ["L_365"]


def test_vendor_error_text_is_cleaned(b24, fake_b24):
    with pytest.raises(PermanentApiError) as exc:
        b24.create_task(Entity("deal", "410"), "", "2026-11-25T10:00:00+03:00")
    assert str(exc.value) == "POST /tasks.task.add.json: HTTP 400: ERROR_CORE: Task title is not specified"


def test_add_note_and_notify(b24, fake_b24):
    assert b24.add_note(Entity("deal", "410"), "Клиент подтвердил оплату") == fake_b24.comments[0]["ID"]
    [note] = fake_b24.method_calls("crm.timeline.comment.add")
    assert note.body == {"fields": {"ENTITY_ID": 410, "ENTITY_TYPE": "deal", "COMMENT": "Клиент подтвердил оплату"}}
    assert b24.notify("Ольга Коваленко", "Оценка 10") == fake_b24.notifications[0]["id"]
    [notice] = fake_b24.method_calls("im.notify.system.add")
    assert notice.body == {"USER_ID": 1, "MESSAGE": "Оценка 10"}


def test_list_tasks_reads_every_page(b24, fake_b24):
    for n in range(120):
        fake_b24.add_task(title=f"Задача {n}", responsibleId="7", status="5" if n % 6 == 0 else "2",
                          ufCrmTask=["D_410", "C_84"])
    fake_b24.add_task(title="Чужая", ufCrmTask=["D_411"])
    open_tasks = b24.list_tasks(Entity("deal", "410"))
    assert len(open_tasks) == 100 and not any(t["completed"] for t in open_tasks)
    assert [c.body["start"] for c in fake_b24.method_calls("tasks.task.list")] == [0, 50]
    assert fake_b24.method_calls("tasks.task.list")[0].body["filter"] == {"UF_CRM_TASK": "D_410", "!REAL_STATUS": 5}
    every = b24.list_tasks(Entity("deal", "410"), open_only=False)
    assert len({t["id"] for t in every}) == 120
    assert [c.body["start"] for c in fake_b24.method_calls("tasks.task.list")][2:] == [0, 50, 100]


def test_list_activities(b24, fake_b24):
    fake_b24.activities += [{"ID": "5", "OWNER_TYPE_ID": "2", "OWNER_ID": "410", "TYPE_ID": "2", "SUBJECT": "Встреча",
                             "COMPLETED": "N", "DEADLINE": "2026-11-25T10:00:00+03:00", "RESPONSIBLE_ID": "7"},
                            {"ID": "6", "OWNER_TYPE_ID": "3", "OWNER_ID": "410", "TYPE_ID": "2", "SUBJECT": "Не то"}]
    assert b24.list_activities(Entity("deal", "410")) == [
        {"id": "5", "type": "2", "subject": "Встреча", "completed": False, "deadline": "2026-11-25T10:00:00+03:00",
         "responsible": {"id": "7"}}]
    [call] = fake_b24.method_calls("crm.activity.list")
    assert call.body["filter"] == {"OWNER_TYPE_ID": 2, "OWNER_ID": 410}


def test_changed_since_reads_every_page(b24, fake_b24):
    fake_b24.zone = timezone(timedelta(hours=3))   # the portal's own offset, as its DATE_MODIFY shows
    for n in range(60):
        fake_b24.add("deal", {"ID": str(1000 + n), "TITLE": f"Сделка {n}",
                              "DATE_MODIFY": f"2026-01-{1 + n % 28:02d}T10:00:00+03:00"})
    since = "2026-01-02T00:00:00+03:00"
    changed = b24.changed_since(since)
    expected = sorted((d["DATE_MODIFY"], str(d["ID"])) for d in fake_b24.records["deal"].values()
                      if d["DATE_MODIFY"] > since)
    assert [(c.modified, c.id) for c in changed] == expected and len(changed) == 57
    assert {c.type for c in changed} == {"deal"} and changed[0].raw["ID"] == expected[0][1]
    calls = fake_b24.method_calls("crm.deal.list")
    assert [c.body["start"] for c in calls] == [0, 50]
    assert calls[0].body["filter"] == {">DATE_MODIFY": since} and calls[0].body["order"] == {"DATE_MODIFY": "ASC"}


def test_batch_splits_into_groups_of_50_and_keeps_sub_errors(b24, fake_b24):
    commands = {f"d{n}": bitrix24.command("crm.deal.get", {"id": 410}) for n in range(120)}
    commands["bad"] = "crm.nothing.get?id=1"
    answer = b24.batch(commands)
    assert [len(c.body["cmd"]) for c in fake_b24.method_calls("batch")] == [50, 50, 21]
    assert len(answer["result"]) == 120 and answer["result"]["d119"]["TITLE"] == "New Deal #1"
    assert answer["errors"] == {"bad": {"error": "ERROR_METHOD_NOT_FOUND", "error_description": "Method not found!"}}


def test_command_encodes_nested_params_php_style():
    assert bitrix24.command("tasks.task.list", {"filter": {"UF_CRM_TASK": "D_1"}, "select": ["ID", "TITLE"]}) == (
        "tasks.task.list?filter%5BUF_CRM_TASK%5D=D_1&select%5B0%5D=ID&select%5B1%5D=TITLE")


# --- errors ---------------------------------------------------------------------------------------

def test_400_with_an_empty_code_is_permanent(b24, fake_b24):
    fake_b24.fail(r"crm\.deal\.update", 400, doc("error_400_crm_deal.json"))
    with pytest.raises(PermanentApiError) as exc:
        b24.update(Entity("deal", "410"), {"TITLE": "x"}, resolve=False)
    assert str(exc.value) == "POST /crm.deal.update.json: HTTP 400: Parameter 'fields' must be array."
    assert exc.value.status == 400


@pytest.mark.parametrize("status, body", [
    (503, doc("error_query_limit.json")),
    (200, doc("error_query_limit.json")),
    (429, {"error": "OPERATION_TIME_LIMIT", "error_description": "Method is blocked due to operation time limit."}),
    (503, {"error": "OVERLOAD_LIMIT", "error_description": "REST API is blocked due to overload."}),
    (500, {"error": "INTERNAL_SERVER_ERROR", "error_description": "Internal server error"}),
    (502, b"<html>Bad Gateway</html>"),
], ids=["query-limit-503", "query-limit-200", "operation-time-429", "overload-503", "internal-500", "html-502"])
def test_limits_and_server_errors_are_retryable(b24, fake_b24, status, body):
    fake_b24.fail(r"crm\.timeline\.comment\.add", status, body)
    with pytest.raises(RetryableApiError) as exc:
        b24.add_note(Entity("deal", "410"), "x")
    assert exc.value.status == status
    code = body.get("error") if isinstance(body, dict) else None
    assert (code or "Bad Gateway") in str(exc.value)
    assert (exc.value.retry_after == 1.0) is (code == "QUERY_LIMIT_EXCEEDED")
    assert b24.add_note(Entity("deal", "410"), "x") is not None  # the next call goes through


def test_portal_deleted_is_permanent_even_with_500(b24, fake_b24):
    fake_b24.fail(r"crm\.deal\.get", 500, {"error": "PORTAL_DELETED", "error_description": "Portal was deleted"})
    with pytest.raises(PermanentApiError, match="PORTAL_DELETED: Portal was deleted"):
        b24.get_entity(Entity("deal", "410"))


# --- configuration and record-only ------------------------------------------------------------------

def test_base_url_may_already_hold_the_code(fake_b24):
    conn = Connection("c", "bitrix24", base_url=f"{fake_b24.base_url}/{fake_b24.code}/",
                      credentials={"webhook": fake_b24.code})
    assert bitrix24.Client(conn).add_note(Entity("deal", "410"), "x") is not None
    assert bitrix24.Client(connection(fake_b24)).endpoint == f"{fake_b24.base_url}/{fake_b24.code}"


def test_record_only_logs_instead_of_calling(fake_b24, caplog):
    conn = Connection(name="newcomer", type="bitrix24", base_url=fake_b24.base_url, webhook_secret="s")
    client = bitrix24.Client(conn)
    caplog.set_level("INFO")
    assert client.create_task(Entity("deal", "410"), "Позвонить", "2026-11-25T10:00:00+03:00",
                              responsible="Иван Петренко") is None
    assert client.move_to_stage(Entity("deal", "410"), "Проект сдан", pipeline="Реализация") is None
    assert client.get_entity(Entity("deal", "410")) is None and client.list_tasks(Entity("deal", "410")) is None
    assert fake_b24.calls == []
    assert "would call POST " in caplog.text and "/tasks.task.add.json" in caplog.text
    assert '"RESPONSIBLE_ID": "Иван Петренко"' in caplog.text
    assert '"stageId": "Проект сдан"' in caplog.text and "/crm.item.update.json" in caplog.text


def test_record_only_needs_no_base_url_to_log_a_task(caplog):
    client = bitrix24.Client(Connection(name="newcomer", type="bitrix24", webhook_secret="s"))
    caplog.set_level("INFO")
    assert client.create_task(Entity("deal", "1"), "Позвонить", "2026-11-25T10:00:00+03:00") is None
    assert '"RESPONSIBLE_ID": null' in caplog.text


def test_no_responsible_and_no_user_in_base_url_is_permanent(fake_b24):
    conn = Connection("c", "bitrix24", base_url=fake_b24.url, credentials={"webhook": "x"})
    with pytest.raises(PermanentApiError, match="no responsible user"):
        bitrix24.Client(conn).create_task(Entity("deal", "410"), "Позвонить", "2026-11-25T10:00:00+03:00")
