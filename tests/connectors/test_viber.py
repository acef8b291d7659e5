"""Viber: signed callbacks → Events, send_message / pictures / keyboards against a local fake,
Viber's error statuses (HTTP 200 with status ≠ 0), and buttons signed for a CRM record."""
from __future__ import annotations

import json

import pytest

from connectors import viber
from connectors.base import (
    BadPayload, Connection, PermanentApiError, RawWebhook, RecipientUnreachable, RetryableApiError,
    Unauthorized, UncertainApiError,
)
from tests.conftest import payload
from tests.fakes_viber import TOKEN, FakeViber, callback

USER = "01234567890A="


def conn(**more) -> Connection:
    return Connection(name="vb", type="viber", credentials={"token": TOKEN},
                      options={"sender_name": "Кондитерська", "link": {"crm": "amo"}, **more.pop("options", {})},
                      **more)


def raw(body: bytes, headers: dict | None = None) -> RawWebhook:
    return RawWebhook(headers=headers or {}, content_type="application/json", body=body)


def signed(name: str) -> RawWebhook:
    body = payload(f"viber/{name}")
    return raw(body, {viber.SIGNATURE_HEADER: viber.signature(TOKEN, body)})


# --- the webhook ---------------------------------------------------------------------------------

def test_the_signature_is_the_hmac_of_the_raw_body_keyed_with_the_token():
    good = signed("message_text.json")
    viber.verify(good, conn())
    with pytest.raises(Unauthorized):
        viber.verify(raw(good.body + b" ", dict(good.headers)), conn())    # one byte changed
    with pytest.raises(Unauthorized):
        viber.verify(raw(good.body), conn())                                # no header
    with pytest.raises(Unauthorized):                                       # a connection without its token
        viber.verify(good, Connection(name="vb", type="viber"))
    other = viber.signature("another-bot-token", good.body)
    with pytest.raises(Unauthorized):
        viber.verify(raw(good.body, {viber.SIGNATURE_HEADER: other}), conn())


def test_a_text_message_is_a_message_from_the_sender():
    [event] = viber.parse(signed("message_text.json"), conn())
    assert (event.kind, event.entity.type, event.entity.id) == ("message.received", "chat", USER)
    assert event.id == "vb:message:4912661846655238145"
    assert event.data["text"] == "a message to the service" and event.data["from"]["name"] == "John McClane"
    assert event.data["tracking_data"] == "tracking data" and event.data["stop"] is False
    assert event.occurred_at.startswith("2016-03-12T06:29:57")


@pytest.mark.parametrize("name, kind, data", [
    ("subscribed.json", "subscription.changed", {"subscribed": True}),
    ("unsubscribed.json", "subscription.changed", {"subscribed": False}),
    ("conversation_started.json", "conversation.started", {"context": "context information", "subscribed": False}),
    ("delivered.json", "message.status", {"status": "delivered", "message_id": "4912661846655238145"}),
    ("failed.json", "message.status", {"status": "failed", "error": "failure description"}),
])
def test_callbacks_become_common_events(name, kind, data):
    [event] = viber.parse(signed(name), conn())
    assert event.kind == kind and event.entity.id == USER
    assert {k: event.data[k] for k in data} == data


def test_viber_s_own_webhook_check_is_acknowledged_without_an_event():
    assert viber.parse(signed("webhook.json"), conn()) == []


def test_a_stop_word_is_marked_for_the_opt_out_list():
    body, _ = callback("message", sender={"id": USER, "name": "Олена"}, message={"type": "text", "text": "  СТОП "})
    [event] = viber.parse(raw(body), conn())
    assert event.data["stop"] is True


@pytest.mark.parametrize("body, reason", [
    (b"[]", "not a Viber callback"),
    (b'{"event": "nope", "timestamp": 1}', "unknown Viber callback event"),
    (b'{"event": "message", "timestamp": "x"}', "timestamp"),
    (b'{"event": "message", "timestamp": 1, "message_token": 1, "sender": {"id": "a/../b c"}, "message": {"type": "text"}}',
     "not a Viber user id"),
    (b'{"event": "message", "timestamp": 1, "message_token": 1, "sender": {"id": "x="}, "message": {"type": "text", "text": 5}}',
     "message.text"),
    (b'{"event": "seen", "timestamp": 1, "user_id": "x="}', "without its message_token"),
    (b'{"event": "unsubscribed", "timestamp": 1, "message_token": -4, "user_id": "x="}', "message_token"),
])
def test_malformed_callbacks_are_refused_with_a_reason(body, reason):
    with pytest.raises(BadPayload, match=reason):
        viber.parse(raw(body), conn())


# --- the client ------------------------------------------------------------------------------------

@pytest.fixture
def fake():
    server = FakeViber().start()
    yield server
    server.stop()


@pytest.fixture
def bot(fake, redis_db):
    return viber.Client(conn(base_url=fake.base_url), store=redis_db, key_prefix="crmbridge-test:")


def test_send_message_posts_the_wire_format_with_the_auth_header(bot, fake):
    token = bot.send_message(USER, "Ваше замовлення готове 🎂",
                             buttons=[[{"text": "Так", "data": "yes"}, {"text": "Сайт", "url": "https://example.com"}]])
    assert token == "5741311803571721087"
    [call] = fake.received("POST", "/pa/send_message")
    assert call.headers["X-Viber-Auth-Token"] == TOKEN
    assert call.body == {
        "receiver": USER, "sender": {"name": "Кондитерська"}, "type": "text", "text": "Ваше замовлення готове 🎂",
        "keyboard": {"Type": "keyboard", "DefaultHeight": False, "Buttons": [
            {"Columns": 3, "Rows": 1, "Text": "Так", "ActionType": "reply", "ActionBody": "yes", "Silent": True},
            {"Columns": 3, "Rows": 1, "Text": "Сайт", "ActionType": "open-url", "ActionBody": "https://example.com"}]}}


def test_a_picture_is_sent_by_url_with_its_text(bot, fake):
    bot.send_photo(USER, "https://cdn.example.com/cake.jpg", caption="Торт «Наполеон»")
    [call] = fake.received("POST", "/pa/send_message")
    assert {k: call.body[k] for k in ("type", "media", "text")} == {
        "type": "picture", "media": "https://cdn.example.com/cake.jpg", "text": "Торт «Наполеон»"}
    with pytest.raises(PermanentApiError, match="URL"):
        bot.send_photo(USER, b"\x89PNG")


def test_viber_error_statuses_in_an_http_200(bot, fake):
    fake.unsubscribed.add(USER)
    with pytest.raises(RecipientUnreachable, match="6 receiverNotSubscribed"):
        bot.send_message(USER, "привіт")
    fake.unsubscribed.clear()
    fake.fail("/pa/send_message", 200, {"status": 12, "status_message": "tooManyRequests"})
    with pytest.raises(RetryableApiError, match="tooManyRequests") as refused:
        bot.send_message(USER, "привіт")
    assert not isinstance(refused.value, UncertainApiError)
    fake.fail("/pa/send_message", 200, {"status": 3, "status_message": "badData"})
    with pytest.raises(PermanentApiError, match="3 badData"):
        bot.send_message(USER, "привіт")
    bad = viber.Client(Connection(name="vb", type="viber", base_url=fake.base_url, credentials={"token": "wrong"}))
    with pytest.raises(PermanentApiError, match="invalidAuthToken"):
        bad.send_message(USER, "привіт")
    assert fake.sent() == []


def test_a_5xx_or_a_dropped_answer_is_uncertain(bot, fake):
    fake.fail("/pa/send_message", 500, {"error": "internal"}, applied=True)
    with pytest.raises(UncertainApiError):
        bot.send_message(USER, "привіт")
    fake.fail("/pa/send_message", 0, b"", reset=True)
    with pytest.raises(UncertainApiError):
        bot.send_message(USER, "привіт")
    assert len(fake.sent()) == 2     # Viber took both: that is why neither may be resent blindly


def test_receivers_and_texts_are_checked_before_anything_leaves(bot, fake):
    with pytest.raises(PermanentApiError, match="not a Viber user id"):
        bot.send_message("../set_webhook", "x")
    with pytest.raises(PermanentApiError, match="7000"):
        bot.send_message(USER, "я" * 7001)
    assert fake.calls == []


# --- buttons bound to a record -------------------------------------------------------------------------

def test_approval_buttons_carry_a_signed_token_and_a_press_is_about_the_record(bot, fake, redis_db):
    record = {"connection": "amo", "type": "lead", "id": "31926520"}
    bot.send_approval(USER, "Підтвердіть замовлення", [{"choice": "approve", "text": "✅ Так"},
                                                        {"choice": "cancel", "text": "❌ Ні"}], record, "Xk3_q9")
    [call] = fake.received("POST", "/pa/send_message")
    approve, cancel = (b["ActionBody"] for b in call.body["keyboard"]["Buttons"])
    assert approve.startswith("v1.approve.l31926520.Xk3_q9.") and cancel.startswith("v1.cancel.l31926520.Xk3_q9.")
    policy = json.loads(redis_db.get("crmbridge-test:approval:vb:lead:31926520:Xk3_q9"))
    assert policy["labels"] == {"approve": "✅ Так", "cancel": "❌ Ні"} and policy["chat"] == USER

    body, _ = callback("message", sender={"id": USER, "name": "Олена"}, message={"type": "text", "text": approve})
    [press] = viber.parse(raw(body), conn())
    assert press.kind == "button.pressed" and (press.entity.type, press.entity.id) == ("lead", "31926520")
    assert press.data["button"] == "approve" and press.data["approval"] == "Xk3_q9"
    assert press.data["record"] == record

    # the same text from someone else, or changed to another record, is refused as forged
    for sender, text in (("SOMEONE=", approve), (USER, approve.replace("l31926520", "l31926521"))):
        body, _ = callback("message", sender={"id": sender, "name": "?"}, message={"type": "text", "text": text})
        [forged] = viber.parse(raw(body), conn())
        assert forged.kind == "button.pressed" and "signature does not match" in forged.data["token_error"]
        assert forged.entity.type == "chat"


def test_buttons_are_bound_only_to_records_of_the_linked_crm(bot):
    with pytest.raises(PermanentApiError, match="options.link.crm"):
        bot.send_approval(USER, "?", [{"choice": "ok", "text": "OK"}], {"connection": "other", "type": "lead",
                                                                       "id": "1"}, "abcdef")


def test_cli_sets_the_webhook_with_the_events_it_reads(fake, tmp_path):
    from click.testing import CliRunner

    import cli
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "none.yaml").write_text("rules: []\n", encoding="utf-8")
    (tmp_path / "connections.yaml").write_text(
        f"connections:\n  vb:\n    type: viber\n    base_url: {fake.base_url}\n    webhook_secret: ${{VB_SECRET}}\n"
        "    credentials:\n      token: ${VB_TOKEN}\n", encoding="utf-8")
    env = {"VB_SECRET": "s", "VB_TOKEN": TOKEN, "REDIS_URL": ""}
    done = CliRunner().invoke(cli.cli, ["--config", str(tmp_path), "viber-set-webhook", "vb", "https://bridge.example.com"],
                              env=env)
    assert done.exit_code == 0, done.output
    [call] = fake.received("POST", "/pa/set_webhook")
    assert call.body["url"] == "https://bridge.example.com/hooks/vb" and "unsubscribed" in call.body["event_types"]
    refused = CliRunner().invoke(cli.cli, ["--config", str(tmp_path), "viber-set-webhook", "vb", "http://x"], env=env)
    assert refused.exit_code != 0 and "https://" in refused.output
