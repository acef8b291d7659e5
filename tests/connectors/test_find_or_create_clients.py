"""find_or_create against each CRM's local fake: found by phone in another format, by email in
another case, by inbox sender; none → created with its fields; several → the oldest; the link
call; a repeat after a crash between the create and its record finds instead of creating twice;
the vendor's error kept in the message."""
from __future__ import annotations

import pytest

from connectors import amocrm, bitrix24, planfix
from connectors.base import Connection, Entity, PermanentApiError
from rules.engine import PlannedAction
from tests.fakes import FakeAmo
from tests.fakes_bitrix24 import FakeBitrix24, field
from tests.fakes_planfix import FakePlanfix
from pipeline import execute
from tests.steps import run_step


def phone_cf(number: str) -> dict:
    return {"field_id": 3, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
            "values": [{"value": number, "enum_id": 1, "enum_code": "WORK"}]}


def email_cf(address: str) -> dict:
    return {"field_id": 4, "field_name": "Email", "field_code": "EMAIL", "field_type": "multitext",
            "values": [{"value": address, "enum_id": 2, "enum_code": "WORK"}]}


# --- amoCRM ------------------------------------------------------------------------------------

@pytest.fixture
def amo(redis_db):
    server = FakeAmo().start()
    server.entity_fields["contacts"] = [{"id": 7001, "name": "Instagram", "type": "text"}]
    conn = Connection(name="amo", type="amocrm", base_url=server.url, credentials={"token": "T"})
    yield server, amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    server.stop()


def test_amocrm_finds_a_phone_written_another_way_and_links_it_to_the_lead(amo):
    server, client = amo
    server.contacts[101] = {"id": 101, "name": "Олена", "created_at": 1700000000,
                            "custom_fields_values": [phone_cf("+38 (067) 123-45-67")]}
    server.contacts[102] = {"id": 102, "name": "Інша", "created_at": 1600000000,
                            "custom_fields_values": [phone_cf("+38 (067) 123-45-68")]}   # fuzzy hit, not her
    server.leads[555] = {"id": 555, "_embedded": {"contacts": []}}
    result = run_step("find_or_create", client, "phone", "0671234567", name="Олена", entity=Entity("lead", "555"))
    assert result == {"by": "phone", "value": "0671234567", "contact": "101", "created": False, "linked": "lead:555"}
    [link] = server.received("POST", r"/api/v4/leads/555/link")
    assert link.body == [{"to_entity_id": 101, "to_entity_type": "contacts"}]
    assert not server.received("POST", r"/api/v4/contacts")


def test_amocrm_email_in_another_case_several_take_the_oldest(amo):
    server, client = amo
    server.contacts[201] = {"id": 201, "name": "Б", "created_at": 1700000000, "custom_fields_values": [email_cf("OLENA@Shop.ua")]}
    server.contacts[202] = {"id": 202, "name": "А", "created_at": 1600000000, "custom_fields_values": [email_cf("olena@shop.ua")]}
    result = run_step("find_or_create", client, "email", "Olena@shop.UA")
    assert (result["contact"], result["created"], result["several_matched"]) == ("202", False, ["202", "201"])


def test_amocrm_none_creates_with_fields_and_a_repeat_finds_it(amo):
    server, client = amo
    first = run_step("find_or_create", client, "inbox_sender", "https://instagram.com/olena.k", name="Олена Коваленко",
                     fields={"Instagram": "https://instagram.com/olena.k"}, field="Instagram")
    [made] = server.received("POST", r"/api/v4/contacts")
    assert made.body == [{"name": "Олена Коваленко", "custom_fields_values": [
        {"field_id": 7001, "values": [{"value": "https://instagram.com/olena.k"}]}]}]
    assert first["created"] is True
    # the worker died after the create, before the executor recorded the step: the re-run gives the contact made
    again = run_step("find_or_create", client, "inbox_sender", "https://instagram.com/olena.k/", name="Олена Коваленко",
                     fields={"Instagram": "https://instagram.com/olena.k"}, field="Instagram")
    assert (again["contact"], again["created"]) == (first["contact"], True)
    # another step for the same sender (a later message) finds it
    later = run_step("find_or_create", client, "inbox_sender", "https://instagram.com/olena.k/", name="Олена Коваленко",
                     fields={"Instagram": "https://instagram.com/olena.k"}, field="Instagram", step_key="later-step")
    assert (later["contact"], later["created"]) == (first["contact"], False)
    assert len(server.received("POST", r"/api/v4/contacts")) == 1


def test_amocrm_phone_create_writes_the_phone_field_and_keeps_the_vendor_error(amo):
    server, client = amo
    run_step("find_or_create", client, "phone", "+380 67 765 43 21", name="Іван")
    [made] = server.received("POST", r"/api/v4/contacts")
    assert made.body[0]["custom_fields_values"] == [{"field_code": "PHONE", "values": [
        {"value": "+380 67 765 43 21", "enum_code": "WORK"}]}]
    server.fail(r"/api/v4/contacts$", 400, {"title": "Bad Request", "status": 400, "detail": "Request validation failed",
                                            "validation-errors": [{"request_id": "0", "errors": [
                                                {"code": "NotSupportedChoice", "path": "name", "detail": "bad"}]}]})
    with pytest.raises(PermanentApiError, match="Request validation failed; name: bad"):
        run_step("find_or_create", client, "email", "new@shop.ua", step_key="another-step")


def test_amocrm_does_not_link_a_task(amo):
    _, client = amo
    result = run_step("find_or_create", client, "email", "x@shop.ua", entity=Entity("task", "9"))
    assert result["linked"] is None and "not to a task" in result["not_linked"]


# --- Bitrix24 ----------------------------------------------------------------------------------

@pytest.fixture
def b24(redis_db):
    server = FakeBitrix24().start()
    server.fields["contact"]["UF_CRM_IG"] = field("string", "UF_CRM_IG", "Instagram")
    conn = Connection(name="b24", type="bitrix24", base_url=server.base_url, credentials={"webhook": server.code})
    yield server, bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    server.stop()


def test_bitrix24_finds_by_phone_in_another_format_and_links_it_to_the_deal(b24):
    server, client = b24
    server.add("contact", {"ID": "31", "NAME": "Ольга", "DATE_CREATE": "2025-03-01T10:00:00+03:00",
                           "PHONE": [{"ID": "1", "VALUE": "380671234567", "VALUE_TYPE": "WORK"}]})
    server.add("deal", {"ID": "410", "TITLE": "Торт", "CATEGORY_ID": "0", "STAGE_ID": "NEW"})
    result = run_step("find_or_create", client, "phone", "+380 67 123 45 67", entity=Entity("deal", "410"))
    assert (result["contact"], result["created"], result["linked"]) == ("31", False, "deal:410")
    [search] = server.method_calls("crm.duplicate.findbycomm")
    assert search.body["entity_type"] == "CONTACT" and search.body["type"] == "PHONE"
    [link] = server.method_calls("crm.deal.contact.add")
    assert link.body == {"id": 410, "fields": {"CONTACT_ID": 31}}


def test_bitrix24_email_case_several_oldest_and_none_creates(b24):
    server, client = b24
    server.add("contact", {"ID": "41", "DATE_CREATE": "2025-05-01T10:00:00+03:00",
                           "EMAIL": [{"VALUE": "Olena@Shop.ua", "VALUE_TYPE": "WORK"}]})
    server.add("contact", {"ID": "42", "DATE_CREATE": "2024-05-01T10:00:00+03:00",
                           "EMAIL": [{"VALUE": "olena@shop.ua", "VALUE_TYPE": "HOME"}]})
    result = run_step("find_or_create", client, "email", "OLENA@shop.ua")
    assert (result["contact"], result["several_matched"]) == ("42", ["42", "41"])
    made = run_step("find_or_create", client, "email", "ivan@shop.ua", name="Іван Петренко", fields={"Instagram": "ivan.p"})
    [add] = server.method_calls("crm.contact.add")
    assert add.body == {"fields": {"UF_CRM_IG": "ivan.p", "NAME": "Іван Петренко",
                                   "EMAIL": [{"VALUE": "ivan@shop.ua", "VALUE_TYPE": "WORK"}]}}
    assert made["created"] is True
    assert run_step("find_or_create", client, "email", "Ivan@Shop.ua")["contact"] == made["contact"]   # a repeat finds it
    assert len(server.method_calls("crm.contact.add")) == 1


def test_bitrix24_inbox_sender_by_its_field_and_the_vendor_error(b24):
    server, client = b24
    server.add("contact", {"ID": "51", "UF_CRM_IG": "https://instagram.com/olga", "DATE_CREATE": "2025-01-01T00:00:00+00:00"})
    result = run_step("find_or_create", client, "inbox_sender", "https://instagram.com/olga", field="Instagram")
    assert (result["contact"], result["created"]) == ("51", False)
    server.add("contact", {"ID": "52", "EMAIL": [{"VALUE": "z@shop.ua"}], "DATE_CREATE": "2025-01-01T00:00:00+00:00"})
    with pytest.raises(PermanentApiError, match="crm.deal.contact.add.json: HTTP 400: Not found"):
        run_step("find_or_create", client, "email", "z@shop.ua", entity=Entity("deal", "999"))


# --- Planfix -----------------------------------------------------------------------------------

@pytest.fixture
def pf(redis_db):
    server = FakePlanfix().start()
    conn = Connection(name="pf", type="planfix", base_url=f"{server.url}/rest", credentials={"token": "T"})
    yield server, planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    server.stop()


def test_planfix_finds_by_phone_and_sets_the_task_counterparty(pf):
    server, client = pf
    server.add("contact", {"id": 71, "name": "Олена", "phones": [{"number": "+380671234567", "type": 1}]})
    server.add("task", {"id": 1042, "name": "Замовлення"})
    result = run_step("find_or_create", client, "phone", "067 123 45 67", entity=Entity("task", "1042"))
    assert (result["contact"], result["created"], result["linked"]) == ("71", False, "task:1042")
    [search] = server.received("POST", r"/rest/contact/list")
    assert search.body["filters"] == [{"type": 4003, "operator": "equal", "value": "0671234567"}]
    assert server.tasks[1042]["counterparty"] == {"id": "contact:71"}


def test_planfix_email_case_several_lowest_id(pf):
    server, client = pf
    server.add("contact", {"id": 82, "name": "Б", "email": "Olena@shop.ua"})
    server.add("contact", {"id": 81, "name": "А", "email": "olena@shop.ua"})
    result = run_step("find_or_create", client, "email", "olena@shop.ua")
    assert (result["contact"], result["several_matched"]) == ("81", ["81", "82"])


def test_planfix_inbox_sender_created_with_fields_then_found_on_a_repeat(pf):
    server, client = pf
    args = {"by": "inbox_sender", "value": "https://instagram.com/sweet.olena", "name": "Олена Солодка",
            "fields": {"Ніша": "Торти"}, "field": "Instagram акаунт"}
    first = run_step("find_or_create", client, **args)
    [made] = server.received("POST", r"/rest/contact/")
    assert made.body == {"name": "Олена Солодка", "customFieldData": [
        {"field": {"id": 201}, "value": "Торти"}, {"field": {"id": 202}, "value": "https://instagram.com/sweet.olena"}]}
    again = run_step("find_or_create", client, **args)                          # the step re-run
    later = run_step("find_or_create", client, **args, step_key="later-step")  # another step: found
    assert (first["created"], again["created"], again["contact"]) == (True, True, first["contact"])
    assert (later["created"], later["contact"]) == (False, first["contact"])
    assert len(server.received("POST", r"/rest/contact/")) == 1
    search = server.received("POST", r"/rest/contact/list")[-1]
    assert search.body["filters"] == [{"type": 4101, "operator": "equal", "field": 202,
                                       "value": "https://instagram.com/sweet.olena"}]


def test_planfix_vendor_error_is_kept(pf):
    server, client = pf
    server.fail(r"/rest/contact/list", 403, {"result": "fail", "code": 5, "error": "Scope denied"})
    with pytest.raises(PermanentApiError, match="Planfix code 5: Scope denied"):
        run_step("find_or_create", client, "email", "a@b.ua")


# --- the worker does not repeat it blindly -----------------------------------------------------------

def test_the_worker_does_not_repeat_a_find_or_create_that_may_have_created():
    """A search may not show a contact created a moment ago (amoCRM's full-text `query`): a step
    that may have been done is left to a person, as other creates are."""
    action = PlannedAction(rule="r", rule_id="x", step=0, connection="amo", method="find_or_create",
                           args={"by": "email", "value": "a@b.ua"}, key="k")
    assert not execute.repeatable(action)
