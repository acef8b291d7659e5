"""amoCRM: what the rules' conditions read besides the record (open tasks, activity from the
events list, files, linked contacts), stage order, only_forward moves, copies and tasks closed by
pattern, against the fake amoCRM v4 in the documented shapes."""
from __future__ import annotations

import json

import pytest

from connectors import amocrm
from connectors.base import Connection, Entity
from tests.conftest import PAYLOADS
from tests.steps import run_step


@pytest.fixture
def amo_client(fake_amo, redis_db):
    conn = Connection(name="agency-amo", type="amocrm", base_url=fake_amo.url,
                      credentials={"token": "T"}, webhook_secret="s")
    fake_amo.add_lead(json.loads((PAYLOADS / "amocrm/api_lead_get.json").read_text()))
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_activity_reads_the_events_list_in_its_documented_shape(amo_client, fake_amo):
    fake_amo.events = json.loads((PAYLOADS / "amocrm/api_events_list.json").read_text())["_embedded"]["events"]
    found = amo_client.rule_context(Entity("lead", "17657"), {"activity"})
    assert found == {"stage_since": "2026-11-24T08:00:00+00:00", "last_activity": "2026-11-28T09:00:00+00:00"}
    [call] = fake_amo.received("GET", "/api/v4/events")
    assert call.query["filter[entity]"] == ["lead"] and call.query["filter[entity_id][]"] == ["17657"]
    assert set(call.query["filter[type][]"]) == set(amocrm.Client.ACTIVITY_EVENTS)
    assert call.query["limit"] == ["100"]


def test_no_events_means_the_stage_began_when_the_lead_was_created(amo_client, fake_amo):
    found = amo_client.rule_context(Entity("lead", "17657"), {"activity", "tasks"})
    created = fake_amo.leads[17657]["created_at"]
    from connectors.base import utc_iso
    assert found == {"tasks": [], "stage_since": utc_iso(created), "last_activity": None}


def test_open_tasks_files_and_linked_contacts(amo_client, fake_amo):
    fake_amo.tasks[7] = {"id": 7, "entity_id": 17657, "entity_type": "leads", "is_completed": False, "text": "Позвонить",
                         "responsible_user_id": 1, "complete_till": 1795856400, "created_at": 1795507200, "result": []}
    fake_amo.file_links[("leads", 17657)] = [{"id": 1, "file_uuid": "c4b4b3a0-0000-4000-8000-000000000001"}]
    fake_amo.drive_files["c4b4b3a0-0000-4000-8000-000000000001"] = {
        "uuid": "c4b4b3a0-0000-4000-8000-000000000001", "name": 'Отчет по проекту "Тест"', "size": 10,
        "metadata": {"extension": "pdf", "mime_type": "application/pdf"}}
    fake_amo.leads[17657].setdefault("_embedded", {})["contacts"] = [{"id": 4001, "is_main": True}]
    fake_amo.contacts[4001] = {"id": 4001, "name": "ООО «Весна»", "custom_fields_values": [
        {"field_id": 1, "field_name": "Классификация", "field_type": "select", "values": [{"value": "клиент", "enum_id": 5}]}]}
    found = amo_client.rule_context(Entity("lead", "17657"), {"tasks", "files", "contacts"})
    assert [(t["id"], t["text"], t["created_at"]) for t in found["tasks"]] == [("7", "Позвонить", "2026-11-24T08:00:00+00:00")]
    assert [f["name"] for f in found["files"]] == ['Отчет по проекту "Тест"']
    assert [(c["id"], c["name"], c["fields"]) for c in found["contact_cards"]] == [("4001", "ООО «Весна»", {"Классификация": "клиент"})]
    assert amo_client.rule_context(Entity("lead", "17657"), set()) == {}


def test_the_main_contacts_phone_and_email_from_its_phone_and_email_fields(amo_client, fake_amo):
    """amoCRM keeps a client's phone and email on the contact (multitext fields with field_code
    PHONE / EMAIL, API-REFERENCE.md); the deal's main contact is the one `is_main` in
    `_embedded.contacts` (api_lead_get_with_contacts.json), not necessarily the first linked."""
    documented = json.loads((PAYLOADS / "amocrm/api_contact_get.json").read_text())  # "enum": "WORK"
    fake_amo.contacts[3] = documented
    fake_amo.contacts[9] = {"id": 9, "name": "Блогер", "custom_fields_values": [
        {"field_id": 3, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
         "values": [{"value": "+7 999 000-00-00", "enum_id": 2, "enum_code": "MOB"}]}]}
    fake_amo.contacts[4] = {"id": 4, "name": "Анна", "custom_fields_values": [
        {"field_id": 3, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
         "values": [{"value": " ", "enum_id": 1, "enum_code": "WORK"},
                    {"value": "+7 903 111-22-33", "enum_id": 2, "enum_code": "MOB"}]},
        {"field_id": 4, "field_name": "Email", "field_code": "EMAIL", "field_type": "multitext",
         "values": [{"value": "anna@client.example", "enum_id": 7, "enum_code": "WORK"},
                    {"value": "anna@home.example", "enum_id": 8, "enum_code": "PRIV"}]}]}
    lead = fake_amo.leads[17657].setdefault("_embedded", {})
    lead["contacts"] = [{"id": 9, "is_main": False}, {"id": 3, "is_main": True}]
    main = amo_client.rule_context(Entity("lead", "17657"), {"contacts"})["main_contact"]
    assert (main["id"], main["name"], main["phone"], main["email"]) == ("3", "Иван Иванов", "+79123", "")
    assert main["phones"] == [{"value": "+79123", "kind": "WORK"}] and main["emails"] == []
    lead["contacts"] = [{"id": 4, "is_main": True}]
    main = amo_client.rule_context(Entity("lead", "17657"), {"contacts"})["main_contact"]
    assert (main["phone"], main["email"]) == ("+7 903 111-22-33", "anna@client.example")  # empty values skipped
    assert main["emails"] == [{"value": "anna@client.example", "kind": "WORK"}, {"value": "anna@home.example", "kind": "PRIV"}]
    lead["contacts"] = []   # no contact: empty strings, so a guard `expr: entity.main_contact.phone` is false
    assert amo_client.rule_context(Entity("lead", "17657"), {"contacts"})["main_contact"] == {
        "id": None, "phone": "", "phones": [], "email": "", "emails": []}


def test_stage_positions_follow_the_statuses_sort(amo_client, fake_amo):
    fake_amo.pipelines = [{"id": 1, "name": "Реализация", "statuses": [
        {"id": 142, "name": "Успешно реализовано", "sort": 10000}, {"id": 3, "name": "Исполнение", "sort": 40},
        {"id": 2, "name": "Подготовка контента", "sort": 20}]}]
    refs = amo_client.name_refs({"stage": {"id": "3"}, "previous_stage": {"id": "2"}, "pipeline": {"id": "1"}})
    assert (refs["stage"]["position"], refs["previous_stage"]["position"]) == (1, 0)
    assert amo_client.name_refs({"stage": {"id": "142"}, "pipeline": {"id": "1"}})["stage"]["position"] == 2


def test_copy_entity_copies_only_the_named_fields_and_renames(amo_client, fake_amo):
    fake_amo.pipelines.append({"id": 3300, "name": "Реализация", "statuses": [{"id": 20001, "name": "Тайминг"}]})
    source = fake_amo.leads[17657]
    names = [cf["field_name"] for cf in source.get("custom_fields_values") or []]
    assert names, "the sample lead has custom fields"
    run_step("copy_entity", amo_client, Entity("lead", "17657"), "Реализация", "Тайминг", copy_fields=names[:1],
             name="Проект", contacts=False)
    [body] = fake_amo.received("POST", "/api/v4/leads")[0].body
    assert body["name"] == "Проект" and (body["pipeline_id"], body["status_id"]) == (3300, 20001)
    assert [v["field_id"] for v in body["custom_fields_values"]] == [source["custom_fields_values"][0]["field_id"]]


def test_complete_tasks_matching_closes_only_the_matching_open_tasks(amo_client, fake_amo):
    for task_id, text in ((1, "Проверить бриф и составить КП"), (2, "Позвонить клиенту")):
        fake_amo.tasks[task_id] = {"id": task_id, "entity_id": 17657, "entity_type": "leads", "is_completed": False,
                                   "text": text, "responsible_user_id": 1, "complete_till": 1, "result": []}
    assert amo_client.complete_tasks_matching(Entity("lead", "17657"), "^проверить бриф", "КП загружено") == ["1"]
    [patch] = fake_amo.received("PATCH", r"/api/v4/tasks/\d+")
    assert (patch.path, patch.body) == ("/api/v4/tasks/1", {"is_completed": True, "result": {"text": "КП загружено"}})
