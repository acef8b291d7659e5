"""Playbook D on Bitrix24 end to end: D3 outside events move the deal forward, never backwards
(a brief form, a payment date, a client's e-mail), D4 the contact's responsible follows the
deal's, D6 NPS (10 → the manager is notified; 6 or less → tasks for the manager and the head).

Real-format webhooks (Bitrix24's form-encoded events, the Apps Script's JSON post) go through the
Flask app into a real RQ worker; the shipped rules (triggers.yaml, people.yaml) act on the fake
portal, and the tests assert on the REST calls it received.
"""
from __future__ import annotations

from tests.playbooks.bitrix24_robots import (  # noqa: F401 - fixtures
    ANNA, HEAD, IVAN, NPS, PAID, STAGE, at, calls, config_dir, contact, deal, env, msk, portal, post, stage_writes,
    updated,
)


def brief(client, runtime, deal_id: str) -> None:
    """The brief form's Apps Script posts the response (tests/payloads/forms/form_response_uk.json's shape)."""
    from tests.conftest import run_worker
    body = {"secret": "forms-secret", "form": {"id": "1FAIpQLSe-brief-event", "title": "Бриф на мероприятие"},
            "response_id": f"2_ABaOnud8Xk1vQmZ3f0aQ{deal_id}", "email": "client@example.com",
            "submitted_at": "2026-12-07T08:31:07.512Z",
            "answers": {"Формат мероприятия": "Свадьба", "Количество гостей": "80", "Номер сделки": deal_id}}
    resp = client.post("/hooks/brief-form", json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    run_worker(runtime)


# --- D3 ------------------------------------------------------------------------------------------

def test_d3_a_filled_brief_moves_the_deal_to_brief_received(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11, 30))
    deal(portal, 420, "Свадьба Ковальчук", "Контакт установлен")
    brief(client, runtime, "420")
    assert stage_writes(portal, 420) == [STAGE["Бриф получен"]]
    assert portal.records["deal"][420]["STAGE_ID"] == "UC_BRIEF"


def test_d3_a_brief_for_a_deal_already_further_on_does_not_move_it_back(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11, 30))
    deal(portal, 421, "Юбилей Петровых", "КП отправлено")
    deal(portal, 422, "Корпоратив «Север»", "Сделка успешна")            # won counts as past every open stage
    brief(client, runtime, "421")
    brief(client, runtime, "422")
    assert stage_writes(portal, 421) == [] and stage_writes(portal, 422) == []
    # the steps read where the deals are and the funnel's order, then left them alone
    assert {b["id"] for b in calls(portal, "crm.deal.get")} >= {421, 422}
    assert calls(portal, "crm.status.list")[-1]["filter"] == {"ENTITY_ID": "DEAL_STAGE"}


def test_d3_a_brief_naming_no_deal_of_the_portal_moves_nothing(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11, 30))
    brief(client, runtime, "999")                 # mistyped: crm.deal.get answers 400 "Not found"
    assert calls(portal, "crm.deal.update") == []


def test_d3_a_payment_date_moves_the_deal_to_paid_but_never_back_from_won(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    deal(portal, 423, "Свадьба Ковальчук", "КП отправлено")
    deal(portal, 424, "Выпускной 11-Б", "Сделка успешна")
    for deal_id in (423, 424):
        post(client, runtime, "ONCRMDEALUPDATE", deal_id)
        updated(client, runtime, portal, deal_id, **{PAID: "2026-12-07"})
    assert stage_writes(portal, 423) == [STAGE["Оплачено"]]
    assert stage_writes(portal, 424) == []


def test_d3_a_clients_incoming_email_moves_a_new_deal_forward_and_an_outgoing_one_does_not(
        client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    deal(portal, 425, "Свадьба Ковальчук", "Новая")
    deal(portal, 426, "Юбилей Петровых", "Новая")
    # crm.activity.get rows (crm/timeline/activities/crm-activity-get.md): TYPE_ID 4 e-mail, DIRECTION 1 in, 2 out
    portal.activities += [
        {"ID": "999", "OWNER_TYPE_ID": "2", "OWNER_ID": "425", "TYPE_ID": "4", "DIRECTION": "1",
         "SUBJECT": "Re: Свадьба 14 февраля", "COMPLETED": "N", "RESPONSIBLE_ID": IVAN},
        {"ID": "1000", "OWNER_TYPE_ID": "2", "OWNER_ID": "426", "TYPE_ID": "4", "DIRECTION": "2",
         "SUBJECT": "Коммерческое предложение", "COMPLETED": "Y", "RESPONSIBLE_ID": IVAN}]
    post(client, runtime, "ONCRMACTIVITYADD", 999)
    post(client, runtime, "ONCRMACTIVITYADD", 1000)
    assert calls(portal, "crm.activity.get") == [{"id": 999}, {"id": 1000}]
    assert stage_writes(portal, 425) == [STAGE["Контакт установлен"]]
    assert stage_writes(portal, 426) == []


# --- D4 ------------------------------------------------------------------------------------------

def test_d4_the_contacts_responsible_follows_the_deals(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук", responsible=IVAN)
    deal(portal, 430, "Свадьба Ковальчук", "Встреча", responsible=IVAN, contact=84)
    deal(portal, 431, "Без контакта", "Встреча", responsible=IVAN)
    for deal_id in (430, 431):
        post(client, runtime, "ONCRMDEALUPDATE", deal_id)
        updated(client, runtime, portal, deal_id, ASSIGNED_BY_ID=ANNA)
    assert calls(portal, "crm.contact.update") == [{"id": 84, "fields": {"ASSIGNED_BY_ID": int(ANNA)}}]
    assert portal.records["contact"][84]["ASSIGNED_BY_ID"] == int(ANNA)


# --- D6 ------------------------------------------------------------------------------------------

def test_d6_nps_10_notifies_the_manager(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук")
    deal(portal, 440, "Свадьба Ковальчук", "Сделка успешна", contact=84)
    post(client, runtime, "ONCRMDEALUPDATE", 440)
    updated(client, runtime, portal, 440, **{NPS: "10"})
    assert calls(portal, "im.notify.system.add") == [
        {"USER_ID": int(IVAN), "MESSAGE": "Клиент поставил NPS 10: «Свадьба Ковальчук» 🎉"}]
    assert calls(portal, "tasks.task.add") == []


def test_d6_nps_6_or_less_sets_tasks_for_the_manager_and_the_head_at_once(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    contact(portal, 84, "Мария Ковальчук")
    deal(portal, 441, "Свадьба Ковальчук", "Сделка успешна", contact=84)
    post(client, runtime, "ONCRMDEALUPDATE", 441)
    updated(client, runtime, portal, 441, **{NPS: "5"})
    tasks = [t["fields"] for t in calls(portal, "tasks.task.add")]
    assert [(t["TITLE"], t["RESPONSIBLE_ID"], t["UF_CRM_TASK"], t["DEADLINE"]) for t in tasks] == [
        ("NPS 5: позвонить клиенту и разобраться", int(IVAN), ["D_441", "C_84"], "2026-12-08T12:00:00+03:00"),
        ("NPS 5: разобрать сделку «Свадьба Ковальчук» с менеджером", int(HEAD), ["D_441", "C_84"],
         "2026-12-08T12:00:00+03:00")]
    assert calls(portal, "im.notify.system.add") == []


def test_d6_a_low_score_for_a_deal_without_a_contact_binds_the_tasks_to_the_deal_alone(client, runtime, portal, at):
    at(msk(2026, 12, 7, 12))
    deal(portal, 442, "Корпоратив «Север»", "Сделка успешна")
    deal(portal, 443, "Юбилей Петровых", "Сделка успешна")
    for deal_id, score in ((442, "3"), (443, "8")):          # 8: neither branch
        post(client, runtime, "ONCRMDEALUPDATE", deal_id)
        updated(client, runtime, portal, deal_id, **{NPS: score})
    tasks = [t["fields"] for t in calls(portal, "tasks.task.add")]
    assert [(t["RESPONSIBLE_ID"], t["UF_CRM_TASK"]) for t in tasks] == [(int(IVAN), ["D_442"]), (int(HEAD), ["D_442"])]
    assert calls(portal, "crm.deal.contact.items.get") == [] and calls(portal, "im.notify.system.add") == []
