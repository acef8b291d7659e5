"""Playbook B7: the confectioner puts their task in «Готово» → the client gets the order-ready SMS
through TurboSMS (fake TurboSMS, tests/fakes_sms.py), at the phone the manager wrote on the order
(copied onto the confectioners' task by B5), normalised to E.164; an order without a phone sends
nothing, and B5's copy leaves the empty field out."""
from __future__ import annotations

import copy

import pytest

from sms_text import segments
from tests.conftest import TG_TOKEN
from tests.fakes_inbox import TOKEN as UMNICO_TOKEN
from tests.fakes_planfix import FakePlanfix
from tests.fakes_sms import FakeTurboSMS
from tests.playbooks import confectionery
from tests.playbooks.confectionery import (  # noqa: F401 - fixtures
    CONFECTIONER_STATUSES, at, config_dir, custom, fake_inbox, kyiv, post_inbox, post_planfix, status,
    task_creates, umnico_incoming,
)

READY = "«Солодка мрія»: ваше замовлення готове. Чекаємо на вас!"
PHONE_FIELD = {"id": 313, "name": "Телефон клієнта", "type": 0}


@pytest.fixture
def fake_planfix():
    """The example's fake Planfix (tests/playbooks/confectionery.py), with the order's phone field."""
    server = FakePlanfix()
    server.custom_fields["task"] = copy.deepcopy(confectionery.TASK_FIELDS) + [dict(PHONE_FIELD)]
    server.custom_fields["contact"] = copy.deepcopy(confectionery.CONTACT_FIELDS)
    server.processes = [{"id": confectionery.SALES, "name": "Продажі"},
                        {"id": confectionery.CONFECTIONERS, "name": "Кондитери"}]
    server.statuses = {confectionery.SALES: [{"id": i, "name": n} for n, i in confectionery.SALES_STATUSES.items()],
                       confectionery.CONFECTIONERS: [{"id": i, "name": n} for n, i in CONFECTIONER_STATUSES.items()]}
    server.users = copy.deepcopy(confectionery.USERS)
    server.name_created_fields = True
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_turbo():
    server = FakeTurboSMS().start()
    yield server
    server.stop()


@pytest.fixture
def env(fake_planfix, fake_inbox, fake_tg, fake_turbo):
    """The example's environment (confectionery.env) with TurboSMS pointed at the fake."""
    return {"PLANFIX_BASE_URL": f"{fake_planfix.url}/rest", "PLANFIX_TOKEN": "PF-TOKEN",
            "PLANFIX_WEBHOOK_SECRET": confectionery.PF_SECRET, "PLANFIX_RATE_PER_SECOND": "1000",
            "UMNICO_API_URL": fake_inbox.url, "UMNICO_TOKEN": UMNICO_TOKEN, "UMNICO_USER_ID": "15",
            "INBOX_WEBHOOK_SECRET": confectionery.INBOX_SECRET, "TELEGRAM_API_URL": fake_tg.url,
            "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret",
            "HEAD_CHAT_ID": str(confectionery.HEAD_CHAT), "OLENA_CHAT_ID": str(confectionery.OLENA_CHAT),
            "IVAN_CHAT_ID": str(confectionery.IVAN_CHAT), "MARIA_CHAT_ID": "-100400",
            "TURBOSMS_API_URL": fake_turbo.url, "TURBOSMS_TOKEN": "turbo-token", "TURBOSMS_SENDER": "SolodkaMria"}


def order_in_production(client, runtime, fake_planfix, at, phone: str | None) -> int:
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(64950001, "Бенто-торт на п'ятницю", kyiv(2026, 12, 8, 11, 0), new=True))
    order = max(fake_planfix.tasks)
    values = {309: "Тарас Бондар", 310: "Бенто-торт «Вишня»", 311: {"date": "11-12-2026"}}
    if phone:
        values[313] = phone
    names = {f["id"]: f["name"] for f in fake_planfix.custom_fields["task"]}
    fake_planfix.tasks[order]["customFieldData"] += [{"field": {"id": k, "name": names[k]}, "value": v}
                                                     for k, v in values.items()]
    status(client, runtime, fake_planfix, order, "У виробництво", "Нове звернення")
    return max(fake_planfix.tasks)          # the confectioners' task B5 made


def ready(client, runtime, fake_planfix, task: int) -> None:
    fake_planfix.tasks[task]["status"] = {"id": CONFECTIONER_STATUSES["Готово"]}
    post_planfix(client, runtime, {"event": "task.status_changed",
                                   "task": {"id": str(task), "status": "Готово", "previous_status": "В роботі"}})


def test_b7_the_order_ready_sms_goes_to_the_client_s_phone(client, runtime, fake_planfix, fake_turbo, at):
    made = order_in_production(client, runtime, fake_planfix, at, "067 123 45 67")
    assert custom(task_creates(fake_planfix)[1])[313] == "067 123 45 67"             # «Телефон клієнта» copied
    ready(client, runtime, fake_planfix, made)
    assert [(m["phone"], m["text"], m["sender"]) for m in fake_turbo.messages.values()] == [
        ("380671234567", READY, "SolodkaMria")]
    assert (segments(READY).encoding, segments(READY).parts) == ("UCS-2", 1)
    ready(client, runtime, fake_planfix, made)            # Planfix's retry of the scenario: no second SMS
    assert len(fake_turbo.messages) == 1


def test_b7_no_phone_on_the_order_no_sms(client, runtime, fake_planfix, fake_turbo, at):
    made = order_in_production(client, runtime, fake_planfix, at, None)
    made_body = task_creates(fake_planfix)[1]
    assert 313 not in custom(made_body) and custom(made_body)["Опис виробу"] == "Бенто-торт «Вишня»"   # not copied empty
    ready(client, runtime, fake_planfix, made)
    assert fake_turbo.messages == {}
