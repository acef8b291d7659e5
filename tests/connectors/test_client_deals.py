"""E3's `new_deals`: the deal's client's other deals as each CRM gives them, read when a rule needs
them (rule_context "deals"), against the fake amoCRM v4 (tests/fakes.py) and the fake Bitrix24 portal
(tests/fakes_bitrix24.py) in their documented shapes."""
from __future__ import annotations

import pytest

from connectors import amocrm
from connectors.base import Connection, Entity, utc_iso

T0 = 1796800000   # 2026-12-09


@pytest.fixture
def amo(fake_amo, redis_db):
    conn = Connection(name="amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "T"}, webhook_secret="s")
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def lead(fake, lead_id: int, created: int, status: int, *contacts: int) -> None:
    fake.add_lead({"id": lead_id, "name": f"Lead {lead_id}", "status_id": status, "pipeline_id": 2116,
                   "created_at": created, "closed_at": created + 60 if status in (142, 143) else None,
                   "_embedded": {"contacts": [{"id": c, "is_main": n == 0} for n, c in enumerate(contacts)]}})


def test_amocrm_reads_the_leads_of_every_contact_of_the_lead(amo, fake_amo):
    fake_amo.contacts[801] = {"id": 801, "name": "Олена"}
    fake_amo.contacts[802] = {"id": 802, "name": "ТОВ Весна"}
    lead(fake_amo, 100, T0 - 86400 * 90, 142, 801)           # an earlier purchase, won
    lead(fake_amo, 200, T0, 142, 801, 802)                   # the deal just won
    lead(fake_amo, 300, T0 + 86400 * 5, 10216995, 802)       # opened by the company five days later
    lead(fake_amo, 400, T0 + 86400 * 6, 10216995, 999)       # someone else's
    found = amo.rule_context(Entity("lead", "200"), {"deals"})
    assert found == {"client_deals": [
        {"id": "300", "name": "Lead 300", "created": utc_iso(T0 + 86400 * 5), "open": True},
        {"id": "100", "name": "Lead 100", "created": utc_iso(T0 - 86400 * 90), "open": False}]}
    withs = [(c.path, c.query.get("with")) for c in fake_amo.received("GET")]
    assert ("/api/v4/leads/200", ["contacts"]) in withs
    assert ("/api/v4/contacts/801", ["leads"]) in withs and ("/api/v4/contacts/802", ["leads"]) in withs
    assert amo.rule_context(Entity("lead", "200"), {"tasks"}).get("client_deals") is None


def test_amocrm_a_lead_without_contacts_has_no_client_deals(amo, fake_amo):
    lead(fake_amo, 200, T0, 142)
    assert amo.rule_context(Entity("lead", "200"), {"deals"}) == {"client_deals": []}


def test_bitrix24_lists_the_deals_of_each_contact_of_the_deal(b24_with_a_deal):
    client, fake = b24_with_a_deal
    deal = fake.records["deal"][410]
    deal.update(CONTACT_IDS=[31, 32], CONTACT_ID="31", CLOSED="Y", DATE_CREATE="2026-12-01T10:00:00+02:00")
    fake.add("deal", {"ID": "405", "TITLE": "Перша покупка", "CONTACT_ID": "31", "CLOSED": "Y",
                      "DATE_CREATE": "2026-09-01T10:00:00+03:00", "STAGE_ID": "WON", "CATEGORY_ID": "0"})
    fake.add("deal", {"ID": "420", "TITLE": "Знову", "CONTACT_ID": "32", "CONTACT_IDS": [32], "CLOSED": "N",
                      "DATE_CREATE": "2026-12-15T12:00:00+02:00", "STAGE_ID": "NEW", "CATEGORY_ID": "0"})
    fake.add("deal", {"ID": "430", "TITLE": "Чужа", "CONTACT_ID": "77", "CLOSED": "N",
                      "DATE_CREATE": "2026-12-16T12:00:00+02:00", "STAGE_ID": "NEW", "CATEGORY_ID": "0"})
    found = client.rule_context(Entity("deal", "410"), {"deals", "tasks"})
    assert found == {"client_deals": [
        {"id": "420", "name": "Знову", "created": "2026-12-15T12:00:00+02:00", "open": True},
        {"id": "405", "name": "Перша покупка", "created": "2026-09-01T10:00:00+03:00", "open": False}]}
    assert [c.body["id"] for c in fake.method_calls("crm.deal.contact.items.get")] == [410]
    assert [c.body["filter"] for c in fake.method_calls("crm.deal.list")] == [{"CONTACT_ID": 31}, {"CONTACT_ID": 32}]
    assert client.rule_context(Entity("deal", "410"), {"tasks"}) == {}
