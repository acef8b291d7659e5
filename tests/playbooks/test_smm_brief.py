"""Playbook A, the brief: A6 the link from the Communication task and the submitted form filling
the Planfix contact, A7 the reminder after 2 working days (cancelled by the submission, fired by
the real RQ scheduler, guarded by fresh Planfix data)."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from rq import SimpleWorker
from rq.serializers import JSONSerializer

import worker
from tests.conftest import payload, run_worker
from tests.playbooks import smm
from tests.playbooks.smm import (
    CLIENT_CHAT,
    STAFF_CHAT,
    field_writes,
    planfix_body,
    post_form,
    post_planfix,
    sent,
    task,
)

# the SMM test bed's fixtures: the example configuration, the fake Planfix, the clock
at, config_dir, env, fake_planfix = smm.at, smm.config_dir, smm.env, smm.fake_planfix

TUESDAY_11AM_KYIV = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
LINK = ("Щоб ми швидше розпочали роботу, заповніть, будь ласка, бриф — це займе 10–15 хвилин:\n"
        "https://docs.google.com/forms/d/e/1FAIpQLSeBriefSMMagency/viewform?usp=pp_url&entry.1820735209=1041")
REMINDER = "На жаль, Ви не заповнили Google-форму. Якісь складнощі? Як ми можемо допомогти?"
THANKS = ("Ми отримали заповнений бриф. Тепер у нас є вся необхідна інформація, і ми можемо розпочати "
          "роботу.")
STAFF_NOTICE = "✅ Клієнт Кав'ярня «Зерно» заповнив бриф (задача №1041)."


def communication_task(**fields) -> dict:
    item = task(1041, "Комунікація", "В роботі", "Комунікація", order=1, **{"Надіслати бриф": True, **fields})
    item["counterparty"] = {"id": "contact:318", "name": "Кав'ярня «Зерно»"}
    return item


def brief_response() -> dict:
    """The form-bound Apps Script's post, for the brief sent from task 1041."""
    body = json.loads(payload("forms/form_response_uk.json"))
    body["answers"]["Номер задачі в Planfix"] = "1041"
    return body


def reminders(runtime) -> list[dict]:
    return [t for t in runtime.backend.timers.pending() if t["rule"] == "A7 brief reminder"]


def scheduler_pass(runtime) -> None:
    """What a worker process does (tests/test_timers.py): queue the due timers, then a real RQ
    worker with its scheduler runs the jobs."""
    runtime.backend.fire_due_timers()
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def test_a6_link_sent_then_brief_fills_the_contact_and_cancels_the_reminder(
        live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_11AM_KYIV)
    fake_planfix.add("task", communication_task())
    post_planfix(live_server, planfix_body("smm_task_updated_send_brief.json"))
    run_worker(runtime)

    assert sent(fake_tg, CLIENT_CHAT) == [LINK]
    assert field_writes(fake_planfix, "task", 1041, 115) == ["false"]           # ready to be ticked again
    assert field_writes(fake_planfix, "task", 1041, 116) == [{"date": "24-11-2026"}]
    [timer] = reminders(runtime)
    assert timer["fire_at"] == "2026-11-26T11:00:00+02:00"                     # 2 working days later

    at(TUESDAY_11AM_KYIV + timedelta(days=1))
    assert post_form(live_server, brief_response()) == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)

    [contact] = fake_planfix.received("POST", "/rest/contact/318")
    assert contact.body == {"customFieldData": [
        {"field": {"id": 210}, "value": "Кав'ярня «Зерно»"}, {"field": {"id": 201}, "value": "Кав'ярні"},
        {"field": {"id": 211}, "value": "Instagram, Facebook"}, {"field": {"id": 212}, "value": "15000"}]}
    assert field_writes(fake_planfix, "task", 1041, 117) == [{"date": "25-11-2026"}]
    assert sent(fake_tg, STAFF_CHAT) == [STAFF_NOTICE]
    assert sent(fake_tg, CLIENT_CHAT) == [LINK, THANKS]
    assert reminders(runtime) == []                                             # cancelled by the submission

    # the script sends the same response again (its hourly retry): handled once
    assert post_form(live_server, brief_response()) == {"accepted": 0, "duplicates": 1}
    run_worker(runtime)
    assert len(fake_planfix.received("POST", "/rest/contact/318")) == 1
    assert sent(fake_tg, CLIENT_CHAT) == [LINK, THANKS]


def test_a7_reminder_fires_through_the_real_scheduler_and_a_late_brief_is_still_thanked_once(
        live_server, runtime, fake_planfix, fake_tg, at):
    fake_planfix.add("task", communication_task())
    at(datetime.now(UTC) - timedelta(days=10))   # so that "after 2 working days" is due now
    post_planfix(live_server, planfix_body("smm_task_updated_send_brief.json"))
    run_worker(runtime)
    assert len(reminders(runtime)) == 1 and sent(fake_tg, CLIENT_CHAT) == [LINK]

    at(datetime.now(UTC))
    scheduler_pass(runtime)
    scheduler_pass(runtime)
    fake_tg.wait_for("POST", r"/bot.*/sendMessage", count=2)
    assert sent(fake_tg, CLIENT_CHAT) == [LINK, REMINDER]
    assert reminders(runtime) == []

    post_form(live_server, brief_response())
    run_worker(runtime)
    post_form(live_server, brief_response())
    run_worker(runtime)
    assert sent(fake_tg, CLIENT_CHAT) == [LINK, REMINDER, THANKS]
    assert sent(fake_tg, STAFF_CHAT) == [STAFF_NOTICE]


def test_a7_reminder_is_skipped_when_planfix_already_has_the_brief(live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_11AM_KYIV)
    fake_planfix.add("task", communication_task())
    post_planfix(live_server, planfix_body("smm_task_updated_send_brief.json"))
    run_worker(runtime)
    [timer] = reminders(runtime)
    # the brief came in another way (the submission's webhook was lost; the PM wrote the date)
    fake_planfix.tasks[1041] = communication_task(**{"Бриф отримано": {"date": "25-11-2026"}})
    at(datetime.fromisoformat(timer["fire_at"]))
    worker.fire_timer(timer)
    assert sent(fake_tg, CLIENT_CHAT) == [LINK]
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert audit[-1]["what"] == "timer.skipped"
    assert audit[-1]["reason"] == "guard no longer holds: filled: Бриф отримано"


def test_a6_a_response_naming_no_task_fills_nothing(live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_11AM_KYIV)
    body = brief_response()
    body["answers"]["Номер задачі в Planfix"] = ""          # the client cleared the pre-filled answer
    body["response_id"] = "2_ABaOnud8Xk1vQmZ3f0aQm2"
    post_form(live_server, body)
    run_worker(runtime)
    assert fake_planfix.received("POST") == [] and fake_tg.method_calls("sendMessage") == []
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert [a["what"] for a in audit] == []                  # no rule matched: the brief rule needs the task
