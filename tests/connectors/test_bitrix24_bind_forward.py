"""Bitrix24 client: tasks bound to the deal's contacts and company (UF_CRM_TASK), and the
move_forward step (move_to_stage only_forward) on its verbs, against the stage order of
crm.status.list (SORT, SEMANTICS)."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from connectors import bitrix24
from connectors.base import Connection, Entity
from tests.conftest import PAYLOADS
from tests.fakes_bitrix24 import FakeBitrix24, status
from tests.steps import run_step

DUE = "2026-11-25T10:00:00+03:00"


@pytest.fixture
def fake_b24() -> Iterator[FakeBitrix24]:
    server = FakeBitrix24().start()
    deal = json.loads((PAYLOADS / "bitrix24" / "api_deal_get.json").read_text())["result"]
    server.add("deal", deal)  # deal 410, stage PREPARATION (SORT 20), funnel 0, contact 84, company 9
    server.add("lead", {"ID": "365", "TITLE": "Заявка с сайта", "STATUS_ID": "IN_PROCESS", "ASSIGNED_BY_ID": "7"})
    # the documented final stages: WON "S", LOSE "F" (crm/status/crm-status-list.md), and an open
    # stage whose SORT comes after them
    server.statuses["DEAL_STAGE"][-1]["SEMANTICS"] = "S"
    server.statuses["DEAL_STAGE"] += [{**status("DEAL_STAGE", "LOSE", "Сделка провалена", 70), "SEMANTICS": "F"},
                                      status("DEAL_STAGE", "UC_LATE", "Доработка", 90)]
    server.statuses["DEAL_STAGE_3"][-1]["SEMANTICS"] = "S"
    yield server
    server.stop()


@pytest.fixture
def b24(fake_b24, redis_db) -> bitrix24.Client:
    conn = Connection(name="shop-b24", type="bitrix24", base_url=fake_b24.base_url,
                      credentials={"webhook": fake_b24.code}, webhook_secret="s")
    return bitrix24.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def deal(fake: FakeBitrix24) -> dict:
    return fake.records["deal"][410]


# --- create_task bind ----------------------------------------------------------------------------

def test_a_task_is_bound_to_the_deal_every_linked_contact_and_the_company(b24, fake_b24):
    deal(fake_b24)["CONTACT_IDS"] = [84, 85, 86]
    bind = [{"type": "contact", "id": "84"}, {"contacts_of_deal": "410"}, {"type": "company", "id": "9"}]
    task_id = b24.create_task(Entity("deal", "410"), "Prepare the contract", DUE, responsible=7, bind=bind)
    [add] = fake_b24.method_calls("tasks.task.add")
    assert add.body["fields"]["UF_CRM_TASK"] == ["D_410", "C_84", "C_85", "C_86", "CO_9"]
    assert fake_b24.tasks[task_id]["ufCrmTask"] == ["D_410", "C_84", "C_85", "C_86", "CO_9"]
    [items] = fake_b24.method_calls("crm.deal.contact.items.get")
    assert items.body == {"id": 410}


def test_the_contacts_are_read_in_the_deals_order_and_an_explicit_contact_is_kept(b24, fake_b24):
    deal(fake_b24)["CONTACT_IDS"] = [85, 84]
    b24.create_task(Entity("deal", "410"), "x", DUE, responsible=7,
                    bind=[{"type": "contact", "id": "12"}, {"contacts_of_deal": "410"}])
    assert fake_b24.method_calls("tasks.task.add")[0].body["fields"]["UF_CRM_TASK"] == ["D_410", "C_12", "C_85", "C_84"]


def test_a_deal_with_no_contact_linked_now_binds_only_what_is_left(b24, fake_b24):
    deal(fake_b24)["CONTACT_ID"] = None
    b24.create_task(Entity("deal", "410"), "x", DUE, responsible=7,
                    bind=[{"contacts_of_deal": "410"}, {"type": "company", "id": "9"}])
    assert fake_b24.method_calls("tasks.task.add")[0].body["fields"]["UF_CRM_TASK"] == ["D_410", "CO_9"]


def test_without_bind_no_contacts_are_read(b24, fake_b24):
    b24.create_task(Entity("deal", "410"), "x", DUE, responsible=7)
    assert fake_b24.method_calls("tasks.task.add")[0].body["fields"]["UF_CRM_TASK"] == ["D_410"]
    assert fake_b24.method_calls("crm.deal.contact.items.get") == []


def test_record_only_logs_the_bindings_it_knows(fake_b24, caplog):
    client = bitrix24.Client(Connection(name="newcomer", type="bitrix24", base_url=fake_b24.base_url))
    caplog.set_level("INFO")
    assert client.create_task(Entity("deal", "410"), "x", DUE, responsible=7,
                              bind=[{"type": "contact", "id": "84"}, {"contacts_of_deal": "410"}]) is None
    assert fake_b24.calls == []
    assert '"UF_CRM_TASK": ["D_410", "C_84"]' in caplog.text


# --- move_to_stage only_forward: the move_forward step ---------------------------------------------

def forward(client: bitrix24.Client, entity: Entity, stage: str) -> dict:
    return run_step("move_forward", client, entity=entity, stage=stage)


def test_forward_moves_and_reads_the_funnels_stage_order_once(b24, fake_b24):
    assert forward(b24, Entity("deal", "410"), "В работе") == {"moved": True}
    assert deal(fake_b24)["STAGE_ID"] == "EXECUTING"
    [listed] = fake_b24.method_calls("crm.status.list")
    assert listed.body == {"order": {"SORT": "ASC"}, "filter": {"ENTITY_ID": "DEAL_STAGE"}, "start": 0}
    assert forward(b24, Entity("deal", "410"), "Сделка успешна") == {"moved": True}
    assert deal(fake_b24)["STAGE_ID"] == "WON"
    assert len(fake_b24.method_calls("crm.status.list")) == 1   # cached with the other metadata


@pytest.mark.parametrize("stage", ["Новая", "Подготовка документов", "NEW"])
def test_backward_or_the_same_stage_leaves_the_deal_where_it_is(b24, fake_b24, stage):
    result = forward(b24, Entity("deal", "410"), stage)
    assert result["moved"] is False and result["reason"].startswith("already at stage PREPARATION, not before ")
    assert deal(fake_b24)["STAGE_ID"] == "PREPARATION"
    assert fake_b24.method_calls("crm.deal.update") == [] and fake_b24.method_calls("crm.item.update") == []


def test_the_order_is_by_sort_not_by_the_order_the_portal_lists_them(b24, fake_b24):
    fake_b24.statuses["DEAL_STAGE"].append(status("DEAL_STAGE", "UC_EARLY", "Квалификация", 15))
    assert forward(b24, Entity("deal", "410"), "Квалификация")["moved"] is False


@pytest.mark.parametrize("here, stage, moved", [
    ("WON", "В работе", False),          # won is past every open stage
    ("LOSE", "Доработка", False),        # lost too, even an open stage whose SORT is after it
    ("WON", "Доработка", False),
    ("EXECUTING", "Сделка успешна", True),
    ("UC_LATE", "Сделка провалена", True),   # an open stage sorted after the final ones still comes before them
    ("LOSE", "Сделка успешна", False),   # between final stages SORT decides: WON (60) before LOSE (70)
    ("WON", "Сделка провалена", True),
])
def test_won_and_lost_count_as_past_every_open_stage(b24, fake_b24, here, stage, moved):
    deal(fake_b24)["STAGE_ID"] = here
    assert forward(b24, Entity("deal", "410"), stage)["moved"] is moved
    assert (deal(fake_b24)["STAGE_ID"] != here) is moved


def test_a_stage_of_another_funnel_is_a_move_into_that_funnel(b24, fake_b24):
    deal(fake_b24).update(CATEGORY_ID="3", STAGE_ID="C3:WON")
    # "В работе" is only in funnel 0: the deal, won in funnel 3, moves there through crm.item.update
    assert forward(b24, Entity("deal", "410"), "В работе") == {"moved": True}
    [update] = fake_b24.method_calls("crm.item.update")
    assert update.body == {"entityTypeId": 2, "id": 410, "fields": {"categoryId": 0, "stageId": "EXECUTING"}}
    assert fake_b24.method_calls("crm.status.list") == []


def test_in_its_own_funnel_the_deal_is_compared_with_that_funnels_stages(b24, fake_b24):
    deal(fake_b24).update(CATEGORY_ID="3", STAGE_ID="C3:WON")
    result = forward(b24, Entity("deal", "410"), "Подготовка контента")
    assert result == {"moved": False, "reason": "already at stage C3:WON, not before C3:PREPARATION"}
    assert fake_b24.method_calls("crm.status.list")[0].body["filter"] == {"ENTITY_ID": "DEAL_STAGE_3"}
    # "Новая" is in both funnels: the deal's own (3) is meant, and C3:NEW is before C3:WON
    assert forward(b24, Entity("deal", "410"), "Новая")["moved"] is False


def test_a_stage_the_list_does_not_know_reads_it_fresh_once_then_moves(b24, fake_b24):
    deal(fake_b24)["STAGE_ID"] = "UC_GONE"   # a stage deleted since the deal entered it
    assert forward(b24, Entity("deal", "410"), "В работе") == {"moved": True}
    assert len(fake_b24.method_calls("crm.status.list")) == 2


def test_leads_compare_their_statuses_too(b24, fake_b24):
    assert forward(b24, Entity("lead", "365"), "Не обработан")["moved"] is False
    assert fake_b24.method_calls("crm.lead.update") == []
    assert fake_b24.method_calls("crm.status.list")[0].body["filter"] == {"ENTITY_ID": "STATUS"}


def test_without_only_forward_nothing_is_read_and_the_answer_is_unchanged(b24, fake_b24):
    assert b24.move_to_stage(Entity("deal", "410"), "В работе") is True
    assert fake_b24.method_calls("crm.status.list") == [] and fake_b24.method_calls("crm.deal.get") == []
