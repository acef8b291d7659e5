"""Social inbox: umnico and generic webhooks → Events, and umnico API calls against a local fake."""
from __future__ import annotations

import hashlib
import hmac

import json

import pytest

from connectors import inbox
from connectors.base import (
    BadPayload, Connection, Entity, PermanentApiError, RawWebhook, RetryableApiError, Unauthorized,
)
from tests.conftest import PAYLOADS, raw
from tests.fakes_inbox import TOKEN, FakeInbox, sample

CONN = Connection(name="sweets", type="inbox", webhook_secret="inbox-secret")


def body(payload: dict) -> RawWebhook:
    return RawWebhook({}, "application/json", json.dumps(payload, ensure_ascii=False).encode())


# --- webhooks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, conversation, channel, text, account, sender", [
    ("umnico_message_incoming_uk.json", "64950001", "message",
     "Добрий день! Скільки коштує торт «Наполеон» на 2 кг? 🎂😍",
     {"id": "111401", "name": "solodka.mriya.kyiv", "network": "instagram"},
     {"id": "69525001", "name": "olena.solodka", "avatar": None, "link": "https://instagram.com/olena.solodka"}),
    ("umnico_message_incoming_photo_ru.json", "64950002", "message",
     "Вот такой торт хочу на субботу, с клубникой 🍓",
     {"id": "111405", "name": "tortiki.odessa", "network": "instagram"},
     {"id": "69525002", "name": "marina_sweet", "avatar": None, "link": "https://instagram.com/marina_sweet"}),
    ("umnico_comment_incoming.json", "64950003", "comment", "Ціна? Доставка на Оболонь є?",
     {"id": "111401", "name": "solodka.mriya.kyiv", "network": "instagram"},
     {"id": "69525003", "name": "andrii.k", "avatar": None, "link": "https://instagram.com/andrii.k"}),
    ("generic_message_ru.json", "conv-7781", "message",
     "Здравствуйте! Можно заказать бенто-торт на завтра? 🙏",
     {"id": "ig-17841405555", "name": "tortiki.kharkiv", "network": "instagram"},
     {"id": "ig-user-99120", "name": "Ирина Соколова",
      "avatar": "https://scontent.cdninstagram.com/v/t51.2885-19/irina_avatar.jpg",
      "link": "https://instagram.com/irina.sokolova"}),
    ("generic_comment_uk.json", "post-3311-comments-ig-user-55001", "comment", "А з вишнею такі є? 🍒",
     {"id": "ig-17841401111", "name": "solodka.mriya.lviv", "network": "instagram"},
     {"id": "ig-user-55001", "name": "Тарас Мельник",
      "avatar": "https://scontent.cdninstagram.com/v/t51.2885-19/taras_avatar.jpg",
      "link": "https://instagram.com/taras.melnyk"}),
    ("generic_story_reaction.json", "conv-7790", "story_reaction", "❤️",
     {"id": "ig-17841405555", "name": "tortiki.kharkiv", "network": "instagram"},
     {"id": "ig-user-77002", "name": "Олена", "avatar": None, "link": "https://instagram.com/olena_kh"}),
])
def test_payloads_become_one_message_received(name, conversation, channel, text, account, sender):
    [event] = inbox.parse(raw(f"inbox/{name}"), CONN)
    assert (event.kind, event.source, event.entity) == ("message.received", "inbox",
                                                        Entity("conversation", conversation))
    assert event.data["channel"] == channel and event.data["direction"] == "incoming"
    assert event.data["text"] == text
    assert event.data["account"] == account
    assert event.data["from"] == sender


def test_umnico_event_is_keyed_by_the_message_id_and_keeps_the_reply_route():
    [event] = inbox.parse(raw("inbox/umnico_message_incoming_uk.json"), CONN)
    assert event.id == "sweets:umnico:11201" and event.data["message_id"] == "11201"
    assert event.occurred_at == "2026-03-14T09:41:07+00:00"
    assert event.data["reply"] == {"source": "76920001", "sa_id": "111401"}
    assert (event.data["new_conversation"], event.data["new_sender"]) == (True, True)
    assert event.data["files"] == []


def test_umnico_photo_attachment_is_a_file():
    [event] = inbox.parse(raw("inbox/umnico_message_incoming_photo_ru.json"), CONN)
    assert event.data["files"] == [{"type": "image", "name": None,
                                    "url": "https://scontent.cdninstagram.com/v/t51.2885-15/cake_ref_4411.jpg"}]
    assert event.data["new_conversation"] is False


def test_generic_event_is_keyed_by_message_id_and_reads_offsets():
    [event] = inbox.parse(raw("inbox/generic_message_ru.json"), CONN)
    assert event.id == "sweets:message:ig-mid-aWdfZAG9tZA1"
    assert event.occurred_at == "2026-03-14T10:30:05+00:00"


def test_story_reaction_carries_the_story_as_a_file():
    [event] = inbox.parse(raw("inbox/generic_story_reaction.json"), CONN)
    assert event.data["files"] == [{"type": "story", "name": None,
                                    "url": "https://scontent.cdninstagram.com/v/t51.2885-15/story_2026_03_14.mp4"}]


def test_the_same_message_delivered_twice_has_one_id():
    first = inbox.parse(raw("inbox/generic_comment_uk.json"), CONN)[0]
    again = inbox.parse(raw("inbox/generic_comment_uk.json"), CONN)[0]
    assert first.id == again.id == "sweets:message:ig-comment-18034567890123456"


def test_text_at_message_text_as_a_docs_citing_comment_has_it():
    payload = sample("umnico_message_incoming_uk.json")
    payload["message"]["text"] = payload["message"].pop("message")["text"]
    [event] = inbox.parse(body(payload), CONN)
    assert event.data["text"].startswith("Добрий день!")


def test_umnico_message_without_id_is_keyed_by_its_content():
    payload = sample("umnico_message_incoming_uk.json")
    del payload["message"]["messageId"]
    first, again = inbox.parse(body(payload), CONN)[0], inbox.parse(body(payload), CONN)[0]
    assert first.id == again.id and first.id.startswith("sweets:") and "umnico" not in first.id


def test_outgoing_messages_are_dropped_unless_the_connection_asks():
    assert inbox.parse(raw("inbox/umnico_message_outgoing.json"), CONN) == []
    conn = Connection(name="sweets", type="inbox", webhook_secret="s", options={"outgoing": True})
    [event] = inbox.parse(raw("inbox/umnico_message_outgoing.json"), conn)
    assert event.data["direction"] == "outgoing" and event.data["by_bridge"] is True
    assert event.entity == Entity("conversation", "64950001")


@pytest.mark.parametrize("kind", ["lead.created", "lead.changed.status", "customer.created", "something.new"])
def test_other_umnico_events_are_acknowledged_without_events(kind):
    assert inbox.parse(body({"type": kind, "accountId": 162001, "leadId": 64950001}), CONN) == []


@pytest.mark.parametrize("payload, reason", [
    (b"[]", "expected a JSON object, found list"),
    (b"{", "body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b'{"hello": 1}', "not an inbox webhook (expected umnico's 'type' or the generic 'event')"),
    (b'{"type": "message.incoming", "message": {}}', "message.incoming without leadId"),
    (b'{"type": "message.incoming", "leadId": {"id": 5}, "message": {}}', "message.incoming without leadId"),
    (b'{"type": "message.incoming", "leadId": 5, "message": "hi"}', "message.incoming: 'message' is not an object"),
    (b'{"type": "message.incoming", "leadId": 5, "message": {"sender": []}}', "'sender' is not an object"),
    (b'{"type": "message.incoming", "leadId": 5, "message": {"message": {"attachments": {}}}}',
     "message.attachments is not a list"),
    (b'{"event": "like", "message_id": "1", "conversation_id": "c"}',
     "event 'like' is not one of message, comment, story_reaction"),
    (b'{"event": "message", "conversation_id": "c"}', "message_id is missing"),
    (b'{"event": "message", "message_id": "1", "conversation_id": " "}', "conversation_id is missing"),
    (b'{"event": "comment", "message_id": "1", "conversation_id": "c", "attachments": ["x.jpg"]}',
     "attachments holds a str, not an object"),
])
def test_bad_bodies_are_refused_with_one_line_reasons(payload, reason):
    with pytest.raises(BadPayload) as exc:
        inbox.parse(RawWebhook({}, "application/json", payload), CONN)
    assert str(exc.value) == reason


# --- authentication ------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, query", [({}, {"token": "inbox-secret"}),
                                            ({inbox.TOKEN_HEADER: "inbox-secret"}, {})])
def test_verify_accepts_the_token_in_the_url_or_the_header(headers, query):
    assert inbox.verify(RawWebhook(headers, "application/json", b"{}", query), CONN) is None


@pytest.mark.parametrize("conn, query", [(CONN, {"token": "nope"}), (CONN, {}),
                                         (Connection(name="x", type="inbox"), {"token": ""})])
def test_verify_refuses_a_wrong_or_missing_token(conn, query):
    with pytest.raises(Unauthorized, match="missing or wrong token"):
        inbox.verify(RawWebhook({}, "application/json", b"{}", query), conn)


def test_a_signed_body_is_checked_by_its_signature():
    body = '{"event": "message", "text": "Торт на суботу?"}'.encode()
    good = "sha256=" + hmac.new(b"inbox-secret", body, hashlib.sha256).hexdigest()
    assert inbox.verify(RawWebhook({inbox.SIGNATURE_HEADER: good}, "application/json", body, {}), CONN) is None
    assert inbox.verify(RawWebhook({inbox.SIGNATURE_HEADER: good.upper().replace("SHA256", "sha256")},
                                   "application/json", body, {}), CONN) is None   # hex in either case
    for headers, sent in (({inbox.SIGNATURE_HEADER: good}, body + b" "),          # the body changed on the way
                          ({inbox.SIGNATURE_HEADER: good.replace("sha256", "sha1")}, body),
                          ({inbox.SIGNATURE_HEADER: ""}, body)):
        with pytest.raises(Unauthorized, match="wrong signature"):   # a right token beside it does not help
            inbox.verify(RawWebhook(headers, "application/json", sent, {"token": "inbox-secret"}), CONN)
    with pytest.raises(Unauthorized, match="wrong signature"):
        inbox.verify(RawWebhook({inbox.SIGNATURE_HEADER: good}, "application/json", body, {}),
                     Connection(name="x", type="inbox"))                            # no secret: nothing verifies


@pytest.fixture
def env(env):
    return {**env, "INBOX_WEBHOOK_SECRET": "inbox-secret"}


@pytest.fixture
def config_dir(config_dir):
    with (config_dir / "connections.yaml").open("a", encoding="utf-8") as f:
        f.write("\n  sweets:\n    type: inbox\n    webhook_secret: ${INBOX_WEBHOOK_SECRET}\n")
    return config_dir


def test_the_receiver_queues_a_message_once(client, runtime):
    payload = (PAYLOADS / "inbox/umnico_message_incoming_uk.json").read_bytes()
    first = client.post("/hooks/sweets?token=inbox-secret", data=payload, content_type="application/json")
    again = client.post("/hooks/sweets?token=inbox-secret", data=payload, content_type="application/json")
    assert (first.status_code, first.json) == (200, {"accepted": 1, "duplicates": 0})
    assert (again.status_code, again.json) == (200, {"accepted": 0, "duplicates": 1})
    assert client.post("/hooks/sweets?token=guess", data=payload,
                       content_type="application/json").status_code == 401
    assert runtime.backend.queue.count == 1
    signed = {inbox.SIGNATURE_HEADER: "sha256=" + inbox.sign(payload, "inbox-secret")}
    assert client.post("/hooks/sweets", data=payload, content_type="application/json",
                       headers=signed).json == {"accepted": 0, "duplicates": 1}
    assert client.post("/hooks/sweets", data=payload.replace(b"64950001", b"64950002"), content_type="application/json",
                       headers=signed).status_code == 401


# --- the umnico client ---------------------------------------------------------------------------

@pytest.fixture
def fake():
    server = FakeInbox().start()
    server.add_lead(sample("api_lead.json"), sample("api_sources.json"))
    yield server
    server.stop()


def client_for(fake: FakeInbox, **options) -> inbox.Client:
    return inbox.Client(Connection(name="sweets", type="inbox", base_url=fake.url,
                                   credentials={"token": TOKEN}, options=options))


def test_reply_finds_the_message_channel_and_the_owner(fake):
    [custom_id] = client_for(fake).reply("64950001", "Вітаємо! Торт буде готовий у суботу 🎂")
    [call] = fake.sent("64950001")
    assert call.body == {"message": {"text": "Вітаємо! Торт буде готовий у суботу 🎂"}, "source": "76920001",
                         "userId": 15, "customId": custom_id}
    assert custom_id.startswith("crmbridge:")
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"


def test_reply_with_attachments_sends_one_message_each_text_on_the_first(fake):
    client = client_for(fake, user_id=18)
    sent = client.reply(Entity("conversation", "64950001"), "Ось меню", source="76920001",
                        attachments=[{"type": "image", "url": "https://cdn.example/menu.jpg"},
                                     {"type": "file", "url": "https://cdn.example/prices.pdf"}])
    assert len(sent) == 2
    first, second = (c.body for c in fake.sent("64950001"))
    assert first["message"] == {"text": "Ось меню",
                                "attachment": {"type": "photo", "media": {"url": "https://cdn.example/menu.jpg"}}}
    assert second["message"] == {"attachment": {"type": "doc", "media": {"url": "https://cdn.example/prices.pdf"}}}
    assert first["userId"] == second["userId"] == 18
    assert fake.received("GET") == []  # source and manager were given: nothing looked up


def test_manager_is_looked_up_once(fake):
    client = client_for(fake)
    client.reply("64950001", "раз", source="76920001")
    client.reply("64950001", "два", source="76920001")
    assert len(fake.received("GET", r"/v1\.3/managers")) == 1


def test_get_conversation(fake):
    lead = client_for(fake).get_conversation(Entity("conversation", "64950001"))
    assert lead["account"] == {"id": "111401", "name": "solodka.mriya.kyiv", "network": "instagram"}
    assert lead["customer"]["name"] == "Олена" and lead["customer"]["avatar"].endswith("olena_avatar.jpg")
    assert lead["responsible"] == {"id": "18"} and lead["client_wrote_last"] is True


def test_list_managers(fake):
    assert client_for(fake).list_managers() == [
        {"id": "15", "name": "Первый менеджер", "email": "first-manager@company.com", "role": "owner"},
        {"id": "18", "name": "Второй менеджер", "email": "second-manager@company.com", "role": "manager"}]


def test_a_conversation_without_channels_cannot_be_answered(fake):
    fake.add_lead({"id": 7}, [])
    with pytest.raises(PermanentApiError, match="conversation 7 has no channel to reply through"):
        client_for(fake).reply("7", "x")


def test_an_attachment_without_url_is_refused_before_sending(fake):
    with pytest.raises(PermanentApiError, match=r"attachment 2 has no url \(expected \{type, url\}\)"):
        client_for(fake).reply("64950001", "x", source="76920001", user_id=15,
                               attachments=[{"type": "image", "url": "https://cdn.example/a.jpg"}, {"type": "image"}])
    assert fake.calls == []


def test_a_generic_conversation_id_is_not_an_umnico_lead(fake):
    with pytest.raises(PermanentApiError, match="'conv-7781' is not an umnico lead id"):
        client_for(fake).reply("conv-7781", "x")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retryable(fake, status):
    fake.fail(r"/send$", status, {"message": "Too many requests"}, headers={"Retry-After": "3"})
    with pytest.raises(RetryableApiError) as exc:
        client_for(fake).reply("64950001", "x", source="76920001", user_id=15)
    assert exc.value.status == status and exc.value.retry_after == 3.0


def test_a_refused_send_is_permanent_and_keeps_umnico_words(fake):
    with pytest.raises(PermanentApiError) as exc:
        client_for(fake).reply("64950001", "x", source="user_abc", user_id=15)
    assert exc.value.status == 422
    assert str(exc.value) == ("POST /v1.3/messaging/64950001/send: HTTP 422: "
                              "source must be a string consisting of numbers (maybe _)")


def test_a_plain_text_refusal_is_kept_as_it_is(fake):
    fake.fail(r"/managers$", 403, b"Forbidden: tariff does not include API", headers={"Content-Type": "text/plain"})
    with pytest.raises(PermanentApiError, match="HTTP 403: Forbidden: tariff does not include API"):
        client_for(fake).list_managers()


def test_a_wrong_token_is_permanent(fake):
    client = inbox.Client(Connection(name="s", type="inbox", base_url=fake.url, credentials={"token": "bad"}))
    with pytest.raises(PermanentApiError, match="HTTP 401: Unauthorized"):
        client.list_managers()


def test_record_only_logs_instead_of_calling(fake):
    recorded = []
    client = inbox.Client(Connection(name="s", type="inbox", base_url=fake.url),
                          recorder=lambda method, url, payload: recorded.append((method, url, payload)))
    client.reply("64950001", "Привіт")
    assert fake.calls == []
    assert recorded[-1][0:2] == ("POST", f"{fake.url}/v1.3/messaging/64950001/send")
    assert recorded[-1][2]["message"] == {"text": "Привіт"}
