"""Playbook B3 end to end: the order's status buttons in Planfix. A status that sends a prepared
message answers the client through umnico in the order's conversation («Розмова»), through the
channel umnico names; «Неуспішно» needs «Причина» (else the status is put back, with a comment);
«Спам» deletes the order and its client; «Чернетка» puts back the status before the wrong one.

Planfix's "status changed" scenario bodies go through the Flask app into a real RQ worker; calls
are checked on the fake Planfix and the fake umnico."""
from __future__ import annotations

import json

import pytest

from tests.conftest import PAYLOADS
from tests.playbooks.confectionery import (  # noqa: F401 - fixtures
    SALES_STATUSES, at, bodies, custom, env, fake_inbox, fake_planfix, kyiv, post_inbox, post_planfix,
    status, umnico_incoming,
)
from tests.playbooks.confectionery import config_dir as example_config_dir  # noqa: F401 - a fixture

LEAD = 64950001


@pytest.fixture
def order(client, runtime, fake_planfix, fake_inbox, at) -> int:
    """A client wrote: the order exists in «Нове звернення»; umnico knows the conversation."""
    fake_inbox.add_lead({**json.loads((PAYLOADS / "inbox" / "api_lead.json").read_text(encoding="utf-8")), "id": LEAD},
                        json.loads((PAYLOADS / "inbox" / "api_sources.json").read_text(encoding="utf-8")))
    at(kyiv(2026, 12, 8, 11, 0))
    post_inbox(client, runtime, umnico_incoming(LEAD, "Добрий день!", kyiv(2026, 12, 8, 11, 0), new=True))
    return max(fake_planfix.tasks)


def statuses_written(fake_planfix, task: int) -> list[int]:
    return [b["status"]["id"] for b in bodies(fake_planfix, "POST", rf"/rest/task/{task}") if "status" in b]


def comments(fake_planfix, task: int) -> list[str]:
    return [b["description"] for b in bodies(fake_planfix, "POST", rf"/rest/task/{task}/comments/")]


@pytest.mark.parametrize("name,words", [
    ("Привітання", "Вітаємо в «Солодкій мрії»!"), ("Скрипти: Ціна", "Реквізити для оплати замовлення"),
    ("Скрипти Укр", "Ми готуємо все з натуральних продуктів"),
    ("Скрипти розмови", "Сподіваємось, ви залишилися задоволені. Поділіться з нами враженнями")])
def test_b3_a_script_status_sends_its_message_to_the_client(client, runtime, fake_planfix, fake_inbox, order, name, words):
    status(client, runtime, fake_planfix, order, name, "Нове звернення")
    [sent] = fake_inbox.sent(LEAD)
    assert words in sent.body["message"]["text"]
    # the direct-message channel umnico lists for the conversation (api_sources.json: the comment one first)
    assert sent.body["source"] == "76920001" and sent.body["userId"] == 15


def test_b3_unsuccessful_without_a_reason_is_put_back_with_a_comment(client, runtime, fake_planfix, fake_inbox, order):
    status(client, runtime, fake_planfix, order, "Привітання", "Нове звернення")
    status(client, runtime, fake_planfix, order, "Неуспішно", "Привітання")
    assert statuses_written(fake_planfix, order) == [SALES_STATUSES["Привітання"]]
    assert comments(fake_planfix, order) == [
        "Статус «Неуспішно» не збережено: не заповнено: Причина. Заповніть «Причина» і поставте статус знову."]
    # Planfix reports the status crmbridge put back: no greeting is sent again
    status(client, runtime, fake_planfix, order, "Привітання", "Неуспішно")
    assert len(fake_inbox.sent(LEAD)) == 1


def test_b3_unsuccessful_with_a_reason_is_kept(client, runtime, fake_planfix, order):
    fake_planfix.tasks[order]["customFieldData"].append({"field": {"id": 308, "name": "Причина"}, "value": "Дорого"})
    status(client, runtime, fake_planfix, order, "Неуспішно", "Нове звернення")
    assert statuses_written(fake_planfix, order) == []
    assert comments(fake_planfix, order) == ["Замовлення закрито як неуспішне. Причина: Дорого"]


def test_b3_spam_deletes_the_order_and_its_client(client, runtime, fake_planfix, order):
    contact = max(fake_planfix.contacts)
    status(client, runtime, fake_planfix, order, "Спам", "Нове звернення")
    assert {"isDeleted": True} in bodies(fake_planfix, "POST", rf"/rest/task/{order}")
    assert bodies(fake_planfix, "POST", rf"/rest/contact/{contact}") == [{"isDeleted": True}]
    audit = [e[1][b"entry"].decode() for e in runtime.store.xrange(runtime.keys("audit"))]
    assert sum('"action.done"' in e and "delete_entity" in e for e in audit) == 2


def test_b3_draft_puts_back_the_status_before_the_wrong_one(client, runtime, fake_planfix, fake_inbox, order):
    status(client, runtime, fake_planfix, order, "Привітання", "Нове звернення")
    status(client, runtime, fake_planfix, order, "Оплачено", "Привітання")          # a wrong status
    assert custom(bodies(fake_planfix, "POST", rf"/rest/task/{order}")[-1]) == {"Попередній статус": "Привітання"}
    status(client, runtime, fake_planfix, order, "Чернетка", "Оплачено")
    assert statuses_written(fake_planfix, order)[-1] == SALES_STATUSES["Привітання"]
    assert comments(fake_planfix, order)[-1] == "Статус повернуто: «Привітання» (помилковий — «Оплачено»)."
    status(client, runtime, fake_planfix, order, "Привітання", "Чернетка")           # Planfix reports it
    assert len(fake_inbox.sent(LEAD)) == 1                                           # no second greeting


PHOTO = b"\xff\xd8\xff\xe0JFIF napoleon cake photo"


@pytest.fixture
def config_dir(example_config_dir, fake_inbox):   # noqa: F811
    """The example, with the fake umnico's origin as a file host (a CDN stands there in production)."""
    path = example_config_dir / "connections.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("file_hosts: [cdninstagram.com, fbcdn.net, umnico.com]",
                                 f'file_hosts: [cdninstagram.com, "{fake_inbox.url}"]'), encoding="utf-8")
    return example_config_dir


def test_b3_order_photo_saves_the_clients_last_photo_into_the_order(client, runtime, fake_planfix, fake_inbox, order, at):
    from tests.fakes import multipart_parts
    fake_inbox.media["napoleon.jpg"] = PHOTO
    at(kyiv(2026, 12, 8, 11, 5))
    post_inbox(client, runtime, umnico_incoming(LEAD, "", kyiv(2026, 12, 8, 11, 5), attachments=[
        {"type": "photo", "url": f"{fake_inbox.url}/media/napoleon.jpg"}]))
    status(client, runtime, fake_planfix, order, "Фото замовлення", "Нове звернення")
    [download] = fake_inbox.received("GET", r"/media/napoleon\.jpg")
    assert "Authorization" not in download.headers                      # the umnico token stays home
    [upload] = fake_planfix.received("POST", r"/rest/file/")
    assert multipart_parts(upload)["file"] == {"filename": "napoleon.jpg", "content": PHOTO}
    [note] = bodies(fake_planfix, "POST", rf"/rest/task/{order}/comments/")
    assert note["description"] == "📷 Фото замовлення від клієнта"
    assert note["files"] == [{"id": max(fake_planfix.files)}]


def test_b3_order_photo_without_a_photo_or_from_another_host_saves_nothing(client, runtime, fake_planfix, fake_inbox,
                                                                           order, at):
    status(client, runtime, fake_planfix, order, "Фото замовлення", "Нове звернення")   # no photo sent yet
    at(kyiv(2026, 12, 8, 11, 5))
    post_inbox(client, runtime, umnico_incoming(LEAD, "ось фото", kyiv(2026, 12, 8, 11, 5), attachments=[
        {"type": "photo", "url": "https://evil.example/napoleon.jpg"}]))
    status(client, runtime, fake_planfix, order, "Привітання", "Фото замовлення")
    status(client, runtime, fake_planfix, order, "Фото замовлення", "Привітання")
    assert fake_planfix.received("POST", r"/rest/file/") == []
    assert bodies(fake_planfix, "POST", rf"/rest/task/{order}/comments/") == []
    [dead] = [json.loads(v) for v in runtime.store.hvals(runtime.keys("dead"))]
    assert "attachment URL host 'evil.example' is not one of the allowed file hosts" in json.dumps(dead, ensure_ascii=False)
