"""attach_to_deal on amoCRM (E1 intake, D8 routing): the contact found by phone, their most recently
active open lead gets the note; with none, a lead is made (POST /api/v4/leads with the source fields),
linked to the contact (entity-links-api) and noted. Against the fake amoCRM v4 (tests/fakes.py)."""
from __future__ import annotations

import time

import pytest

from connectors import amocrm
from connectors.base import Connection
from tests.steps import run_step, step_context
from pipeline.steps import STEPS

T0 = 1796800000


@pytest.fixture
def amo(fake_amo, redis_db):
    fake_amo.clock = time.time
    fake_amo.fields.append({"id": 900001, "name": "utm_source", "type": "tracking_data"})
    fake_amo.contacts[801] = {"id": 801, "name": "Олена Коваль", "created_at": T0 - 86400 * 300, "custom_fields_values": [
        {"field_id": 11, "field_code": "PHONE", "field_name": "Телефон", "values": [{"value": "+380 (67) 123-45-67",
                                                                                  "enum_code": "WORK"}]}]}
    conn = Connection(name="amo", type="amocrm", base_url=fake_amo.url, credentials={"token": "T"}, webhook_secret="s")
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def lead(fake, lead_id: int, status: int, updated: int, *contacts: int) -> None:
    fake.add_lead({"id": lead_id, "name": f"Lead {lead_id}", "status_id": status, "pipeline_id": 2116,
                   "created_at": updated - 3600, "updated_at": updated,
                   "_embedded": {"contacts": [{"id": c, "is_main": True} for c in contacts]}})


def notes(fake):
    return [(kind, n["entity_id"], n["params"]["text"]) for (kind, _), items in fake.notes.items() for n in items]


def test_the_note_goes_to_the_contacts_most_recently_active_open_lead(amo, fake_amo):
    lead(fake_amo, 100, 10216995, T0 + 500, 801)     # open, changed last
    lead(fake_amo, 200, 10216994, T0 + 100, 801)     # open, older activity but newer id
    lead(fake_amo, 300, 142, T0 + 900, 801)          # won: closed
    lead(fake_amo, 400, 10216995, T0 + 999, 999)     # someone else's
    result = run_step("attach_to_deal", amo, text="Онлайн-чат: потрібен торт", by="phone", value="+380671234567",
                      none_open="new_deal", deal_title="Онлайн-чат: Олена")
    assert result["attached"] == "lead:100" and result["contact"] == "801"
    assert notes(fake_amo) == [("leads", 100, "Онлайн-чат: потрібен торт")]
    assert fake_amo.received("POST", "/api/v4/leads") == []


def test_no_open_lead_makes_one_with_its_source_links_the_contact_and_notes_it(amo, fake_amo):
    lead(fake_amo, 300, 143, T0, 801)                # lost: closed
    ctx = step_context(amo, key="intake-1")
    kwargs = dict(text="Форма на сайті", by="phone", value="067 123 45 67", none_open="new_deal",
                  deal_title="Заявка з сайту: Олена", deal_fields={"utm_source": "instagram"})
    result = STEPS["attach_to_deal"].run(ctx, **kwargs)
    [made] = [c.body for c in fake_amo.received("POST", "/api/v4/leads")]
    assert made == [{"name": "Заявка з сайту: Олена",
                     "custom_fields_values": [{"field_id": 900001, "values": [{"value": "instagram"}]}]}]
    new_id = max(fake_amo.leads)
    assert result == {"attached": f"lead:{new_id}", "note": result["note"], "contact": "801", "created": True}
    [link] = [c.body for c in fake_amo.received("POST", f"/api/v4/leads/{new_id}/link")]
    assert link == [{"to_entity_id": 801, "to_entity_type": "contacts"}]
    assert notes(fake_amo) == [("leads", new_id, "Форма на сайті")]
    # the step runs again (its job retried): nothing is made, linked or noted twice
    assert STEPS["attach_to_deal"].run(ctx, **kwargs)["attached"] == f"lead:{new_id}"
    assert len(fake_amo.received("POST", "/api/v4/leads")) == 1 and len(notes(fake_amo)) == 1
    assert len(fake_amo.received("POST", f"/api/v4/leads/{new_id}/link")) == 1
    # and the next request from her joins that lead, now linked to her
    again = run_step("attach_to_deal", amo, text="Ще питання", by="phone", value="+380671234567",
                     none_open="new_deal", deal_title="x")
    assert again["attached"] == f"lead:{new_id}" and len(fake_amo.received("POST", "/api/v4/leads")) == 1
