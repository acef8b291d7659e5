"""Playbook D on Bitrix24 end to end: D1 the stage robot, D2 the meeting reminder that follows the
meeting (moved, cancelled when the deal leaves the stage or the time is cleared), D5 tasks bound
to the deal, its contact and its company.

Bitrix24's outgoing-webhook POSTs (form-encoded, the id only) go through the Flask app into a
real RQ worker; the shipped rules (config/examples/bitrix24-robots/rules/robots.yaml) act on the
fake portal and the fake Telegram, and the tests assert on the REST calls the portal received.
"""
from __future__ import annotations

from tests.playbooks.bitrix24_robots import (  # noqa: F401 - fixtures
    ANNA, IVAN, MEETING, STAGE, TG_CHAT, at, calls, config_dir, contact, deal, env, msk, portal, post, tick, timers,
    updated,
)

D2 = "D2 напоминание за час до встречи"


def test_d1_proposal_sent_messages_the_client_and_sets_a_task_for_the_next_working_day(
        client, runtime, portal, fake_tg, at):
    at(msk(2026, 12, 4, 15))   # Friday afternoon: the next working day is Monday
    contact(portal, 84, "Мария Ковальчук")
    deal(portal, 410, "Свадьба Ковальчук", "Встреча", contact=84, company=9, **{TG_CHAT: "555001"})
    post(client, runtime, "ONCRMDEALUPDATE", 410)           # the first event about it: only kept
    assert calls(portal, "tasks.task.add") == [] and fake_tg.method_calls("sendMessage") == []

    updated(client, runtime, portal, 410, STAGE_ID=STAGE["КП отправлено"])

    [sent] = fake_tg.method_calls("sendMessage")
    assert sent.body["chat_id"] == "555001"
    assert sent.body["text"] == ("Мы отправили вам коммерческое предложение по «Свадьба Ковальчук». "
                                 "Если появятся вопросы, напишите нам здесь.")
    [task] = calls(portal, "tasks.task.add")
    assert task["fields"] == {"TITLE": "Получить обратную связь по КП", "DEADLINE": "2026-12-07T15:00:00+03:00",
                              "RESPONSIBLE_ID": int(IVAN), "UF_CRM_TASK": ["D_410", "C_84", "CO_9"]}
    # a repeated delivery of the same event acts once
    post(client, runtime, "ONCRMDEALUPDATE", 410)
    assert len(calls(portal, "tasks.task.add")) == 1 and len(fake_tg.method_calls("sendMessage")) == 1


def test_d2_the_reminder_follows_the_meeting_time_and_fires_an_hour_before(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11))
    deal(portal, 411, "Юбилей Петровых", "Бриф получен", responsible=ANNA, **{MEETING: "2026-12-08T15:00:00+03:00"})
    post(client, runtime, "ONCRMDEALUPDATE", 411)
    updated(client, runtime, portal, 411, STAGE_ID=STAGE["Встреча"])
    [timer] = timers(runtime, D2)
    assert timer["fire_at"] == "2026-12-08T14:00:00+03:00"

    # the manager moves the meeting: Bitrix24's own robot would keep the old time, this one moves
    updated(client, runtime, portal, 411, **{MEETING: "2026-12-09T12:00:00+03:00"})
    [timer] = timers(runtime, D2)
    assert timer["fire_at"] == "2026-12-09T11:00:00+03:00"

    tick(runtime, at, msk(2026, 12, 8, 14, 0, 1))             # the old time: nothing
    assert calls(portal, "im.notify.system.add") == []
    tick(runtime, at, msk(2026, 12, 9, 11, 0, 1))
    assert calls(portal, "im.notify.system.add") == [{"USER_ID": int(ANNA), "MESSAGE": "Встреча через час: «Юбилей Петровых»"}]
    assert timers(runtime, D2) == []


def test_d2_the_reminder_is_cancelled_when_the_deal_leaves_the_stage(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11))
    deal(portal, 412, "Корпоратив «Север»", "Встреча", **{MEETING: "2026-12-08T15:00:00+03:00"})
    post(client, runtime, "ONCRMDEALUPDATE", 412)
    updated(client, runtime, portal, 412, **{MEETING: "2026-12-08T16:00:00+03:00"})
    assert [t["fire_at"] for t in timers(runtime, D2)] == ["2026-12-08T15:00:00+03:00"]

    updated(client, runtime, portal, 412, STAGE_ID=STAGE["КП отправлено"])
    assert timers(runtime, D2) == []
    tick(runtime, at, msk(2026, 12, 8, 15, 0, 1))
    assert calls(portal, "im.notify.system.add") == []


def test_d2_a_meeting_time_cleared_cancels_the_reminder(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11))
    deal(portal, 413, "Выпускной 11-Б", "Встреча", **{MEETING: "2026-12-08T15:00:00+03:00"})
    post(client, runtime, "ONCRMDEALUPDATE", 413)
    updated(client, runtime, portal, 413, **{MEETING: "2026-12-08T17:00:00+03:00"})
    assert len(timers(runtime, D2)) == 1

    updated(client, runtime, portal, 413, **{MEETING: ""})     # Bitrix24 gives a cleared date as ""
    assert timers(runtime, D2) == []
    tick(runtime, at, msk(2026, 12, 8, 16, 0, 1))
    assert calls(portal, "im.notify.system.add") == []


def test_d5_paid_sets_one_task_bound_to_the_deal_its_contact_and_its_company(client, runtime, portal, at):
    at(msk(2026, 12, 7, 11))
    contact(portal, 84, "Мария Ковальчук")
    contact(portal, 85, "Олег Ковальчук")
    deal(portal, 414, "Свадьба Ковальчук", "Бриф получен", contact=84, company=9)   # a stage no rule acts on
    portal.records["deal"][414]["CONTACT_IDS"] = [84, 85]      # a second contact linked to the deal
    post(client, runtime, "ONCRMDEALUPDATE", 414)
    updated(client, runtime, portal, 414, STAGE_ID=STAGE["Оплачено"])

    [task] = calls(portal, "tasks.task.add")
    assert task["fields"]["TITLE"] == "Подготовить закрывающие документы"
    assert task["fields"]["UF_CRM_TASK"] == ["D_414", "C_84", "C_85", "CO_9"]
    assert task["fields"]["DEADLINE"] == "2026-12-09T11:00:00+03:00"     # 2 working days
    assert calls(portal, "crm.deal.contact.items.get") == [{"id": 414}]
