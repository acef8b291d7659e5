"""Telegram: recorded Updates → Events, and Bot API calls against a local fake."""
from __future__ import annotations

import json

import pytest

from connectors import telegram
from connectors.base import (
    BadPayload,
    Connection,
    Entity,
    PermanentApiError,
    RawWebhook,
    RetryableApiError,
    Unauthorized,
    UncertainApiError,
)
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


# --- more recorded updates ------------------------------------------------------------------------

def test_document_message_names_its_file():
    [event] = telegram.parse(raw("telegram/message_document.json"), CONN)
    assert (event.kind, event.entity) == ("message.received", Entity("chat", "806720968"))
    assert event.data["files"] == [{
        "kind": "document", "file_id": "BQACAgIAAxkBAAIKJmQlM8j2AsvU0DrIjezcYxyqgFMNAAKYJwAC1s8pSdFY6_RS6ZC2LwQ",
        "size": 10273, "name": "Ссылка6.docx",
        "mime_type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"}]
    assert (event.data["text"], event.data["caption"], event.data["reply_to"]) == ("", None, None)


def test_reply_carries_the_id_and_text_it_answers():
    [event] = telegram.parse(raw("telegram/message_reply.json"), CONN)
    assert event.data["reply_to"] == {"message_id": 1334, "text": "Original", "from": None}
    assert event.data["text"] == "/start" and event.data["message_id"] == 1365


def test_caption_is_kept_on_its_own_too():
    [event] = telegram.parse(raw("telegram/message_group_photo.json"), CONN)
    assert (event.data["caption"], event.data["text"]) == ("wwww111", "wwww111")


@pytest.mark.parametrize("service", [
    {"left_chat_member": {"id": 5, "is_bot": False, "first_name": "Gone"}},
    {"new_chat_title": "Renamed"},
    {"migrate_to_chat_id": -1003569294766},
])
def test_service_messages_are_acknowledged_without_events(service):
    update = json.loads((PAYLOADS / "telegram/message_private_text.json").read_text())
    message = {k: v for k, v in update["message"].items() if k != "text"}
    body = json.dumps({"update_id": 11, "message": {**message, **service}}).encode()
    assert telegram.parse(RawWebhook({}, "application/json", body), CONN) == []


# --- sending files, editing, downloading ----------------------------------------------------------

def test_send_photo_uploads_bytes_with_caption_and_buttons(bot, fake_tg):
    message_id = bot.send_photo("team", b"\x89PNG fake bytes", caption="Рахунок", buttons=[[{"text": "OK", "data": "ok"}]])
    [fields] = fake_tg.multipart_fields  # multipart text parts, decoded as UTF-8
    assert str(fields["chat_id"]) == "-100500" and fields["caption"] == "Рахунок"
    assert fields["reply_markup"] == {"inline_keyboard": [[{"text": "OK", "callback_data": "ok"}]]}
    [upload] = fake_tg.uploads
    assert (upload["field"], upload["content"]) == ("photo", b"\x89PNG fake bytes")
    assert message_id >= 100


def test_send_photo_by_file_id_uploads_nothing(bot, fake_tg):
    bot.send_photo("1", "AgACAgUAAxkBAAIYSWkMWcIsDJE9mnjJHGyz4aa2lJXSAAIeDGsbbWtgVCwR3sCfLAJOAQADAgADeQADNgQ")
    [call] = fake_tg.method_calls("sendPhoto")
    assert call.body["photo"].endswith("eQADNgQ") and fake_tg.uploads == []


def test_send_document_names_the_file_on_the_wire(bot, fake_tg):
    bot.send_document("team", b"%PDF-1.4 contract", "Договір №7.pdf", caption="Підпишіть")
    [upload] = fake_tg.uploads
    assert upload == {"method": "sendDocument", "field": "document", "filename": "Договір №7.pdf",
                      "content": b"%PDF-1.4 contract"}
    [fields] = fake_tg.multipart_fields
    assert fields["caption"] == "Підпишіть" and str(fields["chat_id"]) == "-100500"


def test_edit_text_replaces_text_and_keyboard(bot, fake_tg):
    bot.edit_text("team", 60, "Готово ✅", buttons=[[{"text": "Відкрити", "url": "https://example.com"}]])
    [call] = fake_tg.method_calls("editMessageText")
    assert (str(call.body["chat_id"]), str(call.body["message_id"]), call.body["text"]) == ("-100500", "60", "Готово ✅")
    assert call.body["reply_markup"] == {"inline_keyboard": [[{"text": "Відкрити", "url": "https://example.com"}]]}


def test_get_file_and_download(bot, fake_tg):
    fake_tg.add_file("BQACAgIAAxkBAAIKJm", "documents/file_12.docx", b"PK\x03\x04 docx bytes")
    assert bot.get_file("BQACAgIAAxkBAAIKJm") == {"file_id": "BQACAgIAAxkBAAIKJm", "file_unique_id": "u-BQACAgIAAxkBAAIKJm",
                                                   "file_size": 15, "file_path": "documents/file_12.docx"}
    content, name = bot.download("BQACAgIAAxkBAAIKJm")
    assert (content, name) == (b"PK\x03\x04 docx bytes", "file_12.docx")
    [get] = fake_tg.received("GET", rf"/file/bot{TG_TOKEN.replace(':', '(?::|%3A)')}/documents/file_12.docx")
    assert get.status == 200


def test_download_refuses_files_over_20_mb(bot, fake_tg):
    with pytest.raises(PermanentApiError, match="file BIG is 25000000 bytes; bots can download at most 20000000 bytes"):
        bot.download("BIG", size=25_000_000)
    assert fake_tg.calls == []  # refused before asking Telegram
    fake_tg.add_file("BIG", "documents/file_13.pdf", b"", size=21_900_000)
    with pytest.raises(PermanentApiError, match="file BIG is too big; bots can download at most 20000000 bytes"):
        bot.download("BIG")
    assert fake_tg.received("GET", r"/file/.*") == []


def test_unknown_file_id_is_permanent(bot, fake_tg):
    with pytest.raises(PermanentApiError, match="(?i)get_file: invalid file_id"):  # PTB drops "Bad Request: "
        bot.download("nope")


def test_set_webhook_sends_url_secret_and_updates(bot, fake_tg):
    assert bot.set_webhook("https://bridge.example/hooks/bot", "tg-secret_1") is True
    assert fake_tg.webhook == {"url": "https://bridge.example/hooks/bot", "secret_token": "tg-secret_1",
                               "allowed_updates": ["message", "edited_message", "callback_query"]}


@pytest.mark.parametrize("secret", ["", "has space", "x" * 257, "ключ"])
def test_set_webhook_refuses_secrets_telegram_would_refuse(bot, fake_tg, secret):
    with pytest.raises(PermanentApiError, match="secret_token must be 1-256 characters of A-Z, a-z, 0-9, _ and -"):
        bot.set_webhook("https://bridge.example/hooks/bot", secret)
    assert fake_tg.calls == []


def test_a_group_upgraded_to_a_supergroup_names_the_new_chat_id(bot, fake_tg):
    body = json.loads((PAYLOADS / "telegram/error_400_migrated.json").read_text())
    fake_tg.fail("sendMessage", 400, body)
    with pytest.raises(PermanentApiError) as exc:
        bot.send_message("-5020240850", "x")
    assert str(exc.value) == "send_message: the group was upgraded to a supergroup; its new chat id is -1003569294766"


def test_record_only_logs_uploads_by_size(fake_tg, caplog):
    client = telegram.Client(Connection(name="bot", type="telegram", webhook_secret="s"))
    caplog.set_level("INFO")
    assert client.send_document("1", b"12345", "a.pdf") is None and client.download("x") is None
    assert fake_tg.calls == [] and '"document": "<5 bytes>"' in caplog.text


# --- cli.py telegram-set-webhook ---------------------------------------------------------------------

def run_cli(fake_tg, *args):
    from click.testing import CliRunner

    import cli
    from tests.conftest import QUICKSTART
    env = {"AMO_WEBHOOK_SECRET": "amo-secret", "AMO_TOKEN": "", "TELEGRAM_API_URL": fake_tg.url,
           "TELEGRAM_BOT_TOKEN": TG_TOKEN, "TELEGRAM_WEBHOOK_SECRET": "tg-secret", "REDIS_URL": ""}
    return CliRunner().invoke(cli.cli, ["--config", str(QUICKSTART), "telegram-set-webhook", *args], env=env)


def test_cli_sets_the_webhook_of_a_connection(fake_tg):
    result = run_cli(fake_tg, "quickstart-bot", "https://bridge.example/")
    assert result.exit_code == 0, result.output
    assert fake_tg.webhook == {"url": "https://bridge.example/hooks/quickstart-bot", "secret_token": "tg-secret",
                               "allowed_updates": ["message", "edited_message", "callback_query"]}
    assert result.output.splitlines()[-1] == ("webhook set: https://bridge.example/hooks/quickstart-bot (secret_token = "
                                              "the connection's webhook_secret; updates: message, edited_message, callback_query)")


@pytest.mark.parametrize("args, message", [
    (("quickstart-amo", "https://bridge.example"), "no telegram connection 'quickstart-amo'; telegram connections: quickstart-bot"),
    (("nope", "https://bridge.example"), "no telegram connection 'nope'"),
    (("quickstart-bot", "http://bridge.example"), "PUBLIC_BASE_URL must be an https:// address Telegram can reach"),
])
def test_cli_refuses_wrong_arguments(fake_tg, args, message):
    result = run_cli(fake_tg, *args)
    assert result.exit_code == 2 and message in result.output
    assert fake_tg.calls == []


def test_cli_reports_telegrams_refusal(fake_tg):
    fake_tg.fail("setWebhook", 400, {"ok": False, "error_code": 400,
                                     "description": "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"})
    result = run_cli(fake_tg, "quickstart-bot", "https://bridge.example")
    assert result.exit_code == 1
    assert "telegram refused the webhook: set_webhook: bad webhook: an https url must be provided" in result.output.lower()


def test_files_on_this_server_are_never_uploaded_by_name(bot, fake_tg, tmp_path):
    secret = tmp_path / "connections.yaml"
    secret.write_text("token: x")
    with pytest.raises(PermanentApiError, match="not a path on this server"):
        bot.send_photo("1", str(secret))
    with pytest.raises(PermanentApiError, match="expected the file's bytes, got str"):
        bot.send_document("1", str(secret), "a.yaml")
    assert fake_tg.calls == []


@pytest.mark.parametrize("status, body", [
    (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 5",
           "parameters": {"retry_after": 5}}),
    (400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}),
    (400, {"ok": False, "error_code": 400, "description": "Bad Request: group chat was upgraded to a supergroup chat",
           "parameters": {"migrate_to_chat_id": -1003569294766}}),
    (403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}),
    (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}),
    (409, {"ok": False, "error_code": 409, "description": "Conflict: terminated by other getUpdates request"}),
    (502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}),
    (500, b"<html>Internal Server Error</html>"),
    (200, b"not json"),
])
def test_json_methods_fail_as_python_telegram_bot_does(bot, fake_tg, status, body):
    """sendMessage & co. go out as plain JSON POSTs (telegram.JSON_METHODS), not through PTB's Bot:
    every answer must become the same error PTB's own request layer leads to."""
    def outcome(send):
        fake_tg.fail("sendMessage", status, body)
        with pytest.raises(Exception) as exc:
            send()
        e = exc.value
        return type(e), str(e), getattr(e, "status", None), getattr(e, "retry_after", None)

    direct = outcome(lambda: bot.send_message("42", "x"))
    through_ptb = outcome(lambda: bot._run("send_message", bot.bot.send_message(chat_id="42", text="x")))
    assert direct == through_ptb
    # Telegram answered: definite, except a 5xx to a message, which it may have sent (then failed)
    assert issubclass(direct[0], UncertainApiError) == (status >= 500)
    if status >= 500:   # an edit answered 5xx is done again safely: retryable, not uncertain
        fake_tg.fail("editMessageText", status, body)
        with pytest.raises(RetryableApiError) as exc:
            bot.edit_text("42", 7, "x")
        assert not isinstance(exc.value, UncertainApiError)


def test_a_connection_never_made_is_retryable_and_nothing_was_sent(fake_tg):
    conn = Connection(name="bot", type="telegram", base_url="http://127.0.0.1:9", credentials={"token": TG_TOKEN})
    with pytest.raises(RetryableApiError) as exc:
        telegram.Client(conn).send_message("42", "x")
    assert not isinstance(exc.value, UncertainApiError)
