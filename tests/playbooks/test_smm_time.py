"""Playbook A, time: A9 hours in work added up across periods, A10 the payment reminder 5 working
days before "Оплачено до", A11 the payment recorded when the payment task is completed."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import worker
from connectors import planfix
from connectors.base import RawWebhook
from tests.conftest import run_worker
from tests.playbooks import smm
from tests.playbooks.smm import (
    CLIENT_CHAT,
    STAFF_CHAT,
    field_writes,
    planfix_body,
    post_planfix,
    sent,
    task,
)

# the SMM test bed's fixtures: the example configuration, the fake Planfix, the clock
at, config_dir, env, fake_planfix = smm.at, smm.config_dir, smm.env, smm.fake_planfix

TUESDAY_NOON_KYIV = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
PAY_REMINDER = ("Через 5 робочих днів період добігає кінця. Щоб не зупиняти процес, сплатіть, будь ласка, "
                "заздалегідь послуги просування та рекламний бюджет.")   # the seed's text, word for word
HOURS = 113  # "Витрачено, год"


def status(number: int, name: str, new: str, old: str, when: str) -> dict:
    return planfix_body("smm_task_status_changed.json", task_id=number, name=name, status=new,
                        previous_status=old, at=when)


def test_a9_time_in_work_adds_up_over_periods_and_redeliveries(live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_NOON_KYIV)
    fake_planfix.add("task", task(1050, "Комунікація", "В роботі", "Комунікація", order=1))
    steps = [
        status(1050, "Комунікація", "В роботі", "Нова", "24-11-2026 10:00"),
        status(1050, "Комунікація", "Виконана", "В роботі", "24-11-2026 12:30"),      # 2 h 30 min
        status(1050, "Комунікація", "Виконана", "В роботі", "24-11-2026 12:30"),      # Planfix's retry
        status(1050, "Комунікація", "В роботі", "Виконана", "24-11-2026 14:00"),      # reopened
        status(1050, "Комунікація", "В роботі", "Виконана", "24-11-2026 14:10"),      # the scenario ran twice
        status(1050, "Комунікація", "Виконана", "В роботі", "24-11-2026 15:00"),      # + 1 h from 14:00
        status(1050, "Комунікація", "Виконана", "В роботі", "24-11-2026 12:45"),      # a late, older delivery
    ]
    answers = []
    for body in steps:
        answers.append(post_planfix(live_server, body))
        run_worker(runtime)
    assert [a["duplicates"] for a in answers] == [0, 0, 1, 0, 0, 0, 0]
    assert field_writes(fake_planfix, "task", 1050, HOURS) == [2.5, 3.5]

    # the job of the last closing change runs again (a worker died before marking it done)
    [again] = planfix.parse(_raw(steps[5]), runtime.connections.connections["agency-planfix"])
    runtime.backend.enqueue_event(again.to_dict())
    run_worker(runtime)
    assert field_writes(fake_planfix, "task", 1050, HOURS) == [2.5, 3.5]
    assert fake_tg.method_calls("sendMessage") == []          # a communication task has no start notice


def _raw(body: dict) -> RawWebhook:
    return RawWebhook(headers={}, content_type="application/json", body=json.dumps(body, ensure_ascii=False).encode())


def payment_task(state: str = "Нова") -> dict:
    item = task(4001, "Оплата за грудень", state, "Оплата", project=77,
                **{"Оплачено до": {"date": "15-12-2026"}})
    item["counterparty"] = {"id": "contact:318", "name": "Кав'ярня «Зерно»"}
    return item


def payment_timers(runtime) -> list[dict]:
    return [t for t in runtime.backend.timers.pending() if t["rule"] == "A10 payment reminder"]


def test_a10_payment_reminder_5_working_days_before_the_period_ends(live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_NOON_KYIV)
    fake_planfix.add("task", payment_task())
    post_planfix(live_server, planfix_body("smm_task_created_payment.json"))
    run_worker(runtime)
    [timer] = payment_timers(runtime)
    # paid until Tuesday 15 December: five working days before is Tuesday 8 December, at 10:00
    # when the office opens (a date field counts from 09:00, before the working hours)
    assert timer["fire_at"] == EXPECTED_REMINDER
    at(datetime.fromisoformat(timer["fire_at"]))
    worker.fire_timer(timer)
    assert sent(fake_tg, CLIENT_CHAT) == [PAY_REMINDER]
    assert payment_timers(runtime) == []


def test_a10_a11_completed_payment_records_the_date_and_cancels_the_reminder(
        live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_NOON_KYIV)
    fake_planfix.add("task", payment_task())
    post_planfix(live_server, planfix_body("smm_task_created_payment.json"))
    run_worker(runtime)
    assert len(payment_timers(runtime)) == 1

    fake_planfix.add("task", payment_task("Завершена"))      # the PM completes it just after midnight
    at(datetime(2026, 12, 4, 22, 30, tzinfo=UTC))
    post_planfix(live_server, status(4001, "Оплата за грудень", "Завершена", "Нова", "05-12-2026 00:30"))
    run_worker(runtime)
    # "Дата оплати" is the day in Kyiv (5 December), not in UTC (still the 4th)
    assert field_writes(fake_planfix, "task", 4001, 121) == [{"date": "05-12-2026"}]
    assert sent(fake_tg, STAFF_CHAT) == ["💰 Оплата отримана: Кав'ярня «Зерно» (задача №4001)."]
    assert payment_timers(runtime) == []                   # the guard no longer holds: cancelled
    assert sent(fake_tg, CLIENT_CHAT) == []


def test_a10_guard_stops_the_reminder_when_planfix_says_completed(live_server, runtime, fake_planfix, fake_tg, at):
    at(TUESDAY_NOON_KYIV)
    fake_planfix.add("task", payment_task())
    post_planfix(live_server, planfix_body("smm_task_created_payment.json"))
    run_worker(runtime)
    [timer] = payment_timers(runtime)
    fake_planfix.add("task", payment_task("Завершена"))      # completed; its webhook was lost
    at(datetime.fromisoformat(timer["fire_at"]))
    worker.fire_timer(timer)
    assert fake_tg.method_calls("sendMessage") == []
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert (audit[-1]["what"], audit[-1]["reason"]) == (
        "timer.skipped", "guard no longer holds: stage is 'Завершена'")


EXPECTED_REMINDER = "2026-12-08T10:00:00+02:00"
