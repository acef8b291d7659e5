"""Playbook A, A10 by Viber: a client with no Telegram group gets the payment reminder from the
agency's Viber bot (the Viber user id in the task field "Viber"), in Viber's wire format (fake
Viber, tests/fakes_viber.py); a client with a Telegram group still gets it in Telegram only."""
from __future__ import annotations

from datetime import datetime

import pytest

import worker
from tests.conftest import TG_TOKEN, run_worker
from tests.fakes_viber import TOKEN, FakeViber
from tests.playbooks import smm
from tests.playbooks.smm import CLIENT_CHAT, STAFF_CHAT, planfix_body, post_planfix, sent, task
from tests.playbooks.test_smm_time import PAY_REMINDER, TUESDAY_NOON_KYIV

at, config_dir, fake_planfix = smm.at, smm.config_dir, smm.fake_planfix
VIBER_USER = "01234567890A="


@pytest.fixture
def fake_viber():
    server = FakeViber().start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_planfix, fake_tg, fake_viber) -> dict[str, str]:
    """smm.env, with the Viber bot pointed at the fake."""
    return {"PLANFIX_BASE_URL": f"{fake_planfix.url}/rest", "PLANFIX_TOKEN": "PF-TOKEN",
            "PLANFIX_WEBHOOK_SECRET": "pf-secret", "TELEGRAM_API_URL": fake_tg.url,
            "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
            "STAFF_CHAT_ID": str(STAFF_CHAT), "FORMS_WEBHOOK_SECRET": "forms-secret",
            "VIBER_API_URL": fake_viber.base_url, "VIBER_TOKEN": TOKEN, "VIBER_WEBHOOK_SECRET": "viber-secret"}


def payment_task(chat: int | None, viber: str | None) -> dict:
    item = task(4001, "Оплата за грудень", "Нова", "Оплата", project=77, chat=chat,
                **{"Оплачено до": {"date": "15-12-2026"}, "Viber": viber})
    item["counterparty"] = {"id": "contact:318", "name": "Кав'ярня «Зерно»"}
    return item


def fire_reminders(live_server, runtime, at) -> list[str]:
    post_planfix(live_server, planfix_body("smm_task_created_payment.json"))
    run_worker(runtime)
    timers = [t for t in runtime.backend.timers.pending() if t["rule"].startswith("A10 payment reminder")]
    for timer in timers:
        at(datetime.fromisoformat(timer["fire_at"]))
        worker.fire_timer(timer)
    return [t["rule"] for t in timers]


def test_a10_by_viber_when_the_client_has_no_telegram_group(live_server, runtime, fake_planfix, fake_tg,
                                                           fake_viber, at):
    at(TUESDAY_NOON_KYIV)
    fake_planfix.add("task", payment_task(chat=None, viber=VIBER_USER))
    assert fire_reminders(live_server, runtime, at) == ["A10 payment reminder by Viber"]
    [message] = fake_viber.sent()
    assert (message["receiver"], message["type"], message["text"]) == (VIBER_USER, "text", PAY_REMINDER)
    assert message["sender"]["name"] == "SMM-агенція"
    assert fake_tg.method_calls("sendMessage") == []


def test_a10_stays_in_telegram_for_a_client_with_a_group(live_server, runtime, fake_planfix, fake_tg,
                                                         fake_viber, at):
    at(TUESDAY_NOON_KYIV)
    fake_planfix.add("task", payment_task(chat=CLIENT_CHAT, viber=VIBER_USER))
    assert fire_reminders(live_server, runtime, at) == ["A10 payment reminder"]
    assert sent(fake_tg, CLIENT_CHAT) == [PAY_REMINDER] and fake_viber.sent() == []
