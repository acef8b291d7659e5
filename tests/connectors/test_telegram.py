"""Telegram: recorded Updates → Events, and Bot API calls against a local fake."""
from __future__ import annotations

import json

import pytest

from connectors import telegram
from connectors.base import BadPayload, Connection, Entity, PermanentApiError, RawWebhook, RetryableApiError, Unauthorized
from tests.conftest import PAYLOADS, TG_TOKEN, raw

CONN = Connection(name="bot", type="telegram", webhook_secret="tg-secret")


def test_private_text_message():
    [event] = telegram.parse(raw("telegram/message_private_text.json"), CONN)
    assert (event.kind, event.entity, event.id) == ("message.received", Entity("chat", "1111111"), "bot:update:10000")
    assert event.data["text"] == "/start"
    assert event.data["from"] == {"id": "1111111", "name": "Test Firstname Test Lastname",
                                  "username": "Testusername", "is_bot": False}
    assert event.data["chat"] == {"id": "1111111", "type": "private", "title": "Test Firstname Test Lastname"}


def test_group_photo_takes_the_largest_size_and_the_caption():
    [event] = telegram.parse(raw("telegram/message_group_photo.json"), CONN)
    assert event.entity == Entity("chat", "-4663428801")
    assert event.data["text"] == "wwww111"
    [photo] = event.data["files"]
    assert photo["kind"] == "photo" and photo["size"] == 137230
    assert photo["file_id"].endswith("eQADNgQ")


def test_callback_query_is_a_button_press_keyed_by_callback_id():
    [event] = telegram.parse(raw("telegram/callback_query.json"), CONN)
    assert event.kind == "button.pressed"
    assert event.id == "bot:callback:4278655576057498272"
    assert event.data["button"] == "button2_bijoy"
    assert event.data["message_id"] == 60 and event.data["chat"]["id"] == "996202131"
    assert event.data["from"]["name"] == "Bijoy"


def test_edited_message_has_its_own_id():
    update = json.loads((PAYLOADS / "telegram/message_private_text.json").read_text())
    update["edited_message"] = {**update.pop("message"), "edit_date": 1441645600, "text": "/start again"}
    [event] = telegram.parse(RawWebhook({}, "application/json", json.dumps(update).encode()), CONN)
    assert (event.kind, event.id) == ("message.edited", "bot:update:10000:edit:1441645600")


def test_updates_no_rule_uses_are_acknowledged_without_events():
    body = json.dumps({"update_id": 5, "my_chat_member": {}}).encode()
    assert telegram.parse(RawWebhook({}, "application/json", body), CONN) == []


@pytest.mark.parametrize("body, reason", [
    (b"[]", "not a Telegram Update (expected an object with an integer update_id)"),
    (b'{"update_id": "7"}', "not a Telegram Update (expected an object with an integer update_id)"),
    (b"{", "body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"[" * 100, "JSON nested deeper than 32"),
])
def test_bad_updates(body, reason):
    with pytest.raises(BadPayload) as exc:
        telegram.parse(RawWebhook({}, "application/json", body), CONN)
    assert str(exc.value) == reason


def test_verify_checks_the_secret_header():
    telegram.verify(RawWebhook({telegram.SECRET_HEADER: "tg-secret"}, "application/json", b""), CONN)
    with pytest.raises(Unauthorized, match="missing or wrong X-Telegram-Bot-Api-Secret-Token header"):
        telegram.verify(RawWebhook({telegram.SECRET_HEADER: "nope"}, "application/json", b""), CONN)


@pytest.fixture
def bot(fake_tg):
    conn = Connection(name="bot", type="telegram", base_url=fake_tg.url, credentials={"token": TG_TOKEN},
                      webhook_secret="s", options={"chats": {"team": "-100500"}})
    return telegram.Client(conn)


def test_send_message_with_inline_keyboard(bot, fake_tg):
    message_id = bot.send_message("team", "Привіт 👋", buttons=[[{"text": "Approve", "data": "ok:1"}]])
    assert message_id == 100
    [call] = fake_tg.method_calls("sendMessage")
    assert call.body["chat_id"] == -100500 or str(call.body["chat_id"]) == "-100500"
    assert call.body["text"] == "Привіт 👋"
    assert call.body["reply_markup"] == {"inline_keyboard": [[{"text": "Approve", "callback_data": "ok:1"}]]}


def test_answer_and_edit_buttons(bot, fake_tg):
    bot.answer_button("4278655576057498272", "Done")
    bot.edit_buttons("996202131", 60, None)
    [answer] = fake_tg.method_calls("answerCallbackQuery")
    assert answer.body["callback_query_id"] == "4278655576057498272" and answer.body["text"] == "Done"
    [edit] = fake_tg.method_calls("editMessageReplyMarkup")
    assert str(edit.body["message_id"]) == "60"


def test_flood_control_is_retryable_with_retry_after(bot, fake_tg):
    fake_tg.fail("sendMessage", 429, json.loads((PAYLOADS / "telegram/error_429.json").read_text()))
    with pytest.raises(RetryableApiError) as exc:
        bot.send_message("1", "x")
    assert exc.value.retry_after == 5.0


@pytest.mark.parametrize("fixture", ["error_400_chat_not_found.json", "error_403_blocked.json"])
def test_client_errors_are_permanent(bot, fake_tg, fixture):
    body = json.loads((PAYLOADS / "telegram" / fixture).read_text())
    fake_tg.fail("sendMessage", body["error_code"], body)
    with pytest.raises(PermanentApiError) as exc:
        bot.send_message("1", "x")
    assert body["description"].split(": ", 1)[1].lower() in str(exc.value).lower()
