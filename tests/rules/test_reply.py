"""`reply`: answer a client through the social inbox, planned from the event and run end to end
against the local fake umnico (tests/fakes_inbox.py)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pipeline import clock
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.engine import plan
from rules.files import load_rules
from tests.conftest import PAYLOADS, run_worker
from tests.fakes_inbox import TOKEN, FakeInbox, sample

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
CONNECTIONS = {"shop-inbox": Connection("shop-inbox", "inbox"), "shop": Connection("shop", "planfix")}


def planned(tmp_path, text, event):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    ruleset = load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path)
    return plan(event, {"type": event.entity.type, "id": event.entity.id, **event.data}, ruleset, NOW, MODULES)


def inbox_event(**data) -> Event:
    return Event(id="shop-inbox:umnico:11201", connection="shop-inbox", source="inbox", kind="message.received",
                 entity=Entity("conversation", "64950001"),
                 data={"text": "Скільки коштує торт?", "reply": {"source": "76920001", "sa_id": "111401"}, **data},
                 raw={}, occurred_at=NOW.isoformat())


def test_a_reply_to_an_inbox_message_goes_back_through_the_channel_the_client_used(tmp_path):
    result = planned(tmp_path, """
rules:
  - name: price
    on: {event: message.received, connection: shop-inbox, text: "(?i)скільки"}
    do: [{reply: {connection: shop-inbox, text: "Вітаємо! Ціни: {{ data.text | length }} символів"}}]
""", inbox_event())
    [action] = result.actions
    assert (action.connection, action.method) == ("shop-inbox", "reply")
    assert action.args == {"conversation": "64950001", "text": "Вітаємо! Ціни: 20 символів",
                           "attachments": None, "source": "76920001"}


def test_a_reply_from_a_crm_event_names_its_conversation(tmp_path):
    event = Event(id="shop:task:7:status", connection="shop", source="planfix", kind="stage.changed",
                  entity=Entity("task", "7"), data={"fields": {"Розмова": "64950002"}}, raw={},
                  occurred_at=NOW.isoformat())
    result = planned(tmp_path, """
rules:
  - name: greeting
    on: {event: stage.changed, connection: shop}
    do: [{reply: {connection: shop-inbox, conversation: "{{ entity.fields['Розмова'] }}", text: "Вітаємо!",
                  files: [{type: image, url: "https://example.com/menu.jpg"}]}}]
""", event)
    [action] = result.actions
    # another conversation than the event's: its channel is looked up when the reply is sent
    assert action.args == {"conversation": "64950002", "text": "Вітаємо!",
                           "attachments": [{"type": "image", "url": "https://example.com/menu.jpg"}]}


@pytest.mark.parametrize("options, error", [
    ("{connection: shop-inbox, text: 'Hi'}", "no conversation to reply in"),
    ("{connection: shop-inbox, conversation: '1', text: '{{ \"\" }}'}", "the reply is empty"),
])
def test_a_reply_that_cannot_be_sent_is_an_error_naming_the_line(tmp_path, options, error):
    event = Event(id="e", connection="shop", source="planfix", kind="stage.changed", entity=Entity("task", "7"),
                  data={}, raw={}, occurred_at=NOW.isoformat())
    result = planned(tmp_path, f"rules:\n  - name: r\n    on: stage.changed\n    do: [{{reply: {options}}}]\n", event)
    assert result.actions == []
    [(rule, message)] = result.errors
    assert rule == "r" and message.startswith("r.yaml:4: reply:") and error in message


# --- end to end: the receiver, a real RQ worker, the fake umnico ------------------------------------

@pytest.fixture
def fake_inbox():
    server = FakeInbox().start()
    server.add_lead(sample("api_lead.json"), sample("api_sources.json"))
    yield server
    server.stop()


@pytest.fixture
def env(env, fake_inbox):
    return {**env, "INBOX_WEBHOOK_SECRET": "inbox-secret", "UMNICO_TOKEN": TOKEN, "UMNICO_API_URL": fake_inbox.url}


@pytest.fixture
def config_dir(config_dir):
    with (config_dir / "connections.yaml").open("a", encoding="utf-8") as f:
        f.write("\n  shop-inbox:\n    type: inbox\n    base_url: ${UMNICO_API_URL}\n"
                "    webhook_secret: ${INBOX_WEBHOOK_SECRET}\n    credentials:\n      token: ${UMNICO_TOKEN}\n"
                "    options: {user_id: 18}\n")
    (config_dir / "rules" / "inbox.yaml").write_text("""
rules:
  - name: price question → price list
    on: {event: message.received, connection: shop-inbox, text: "(?i)скільки коштує"}
    do:
      - reply: {connection: shop-inbox, text: "Вітаємо, {{ data.from.name }}! Наполеон 2 кг — 1400 грн 🎂"}
""", encoding="utf-8")
    return config_dir


def test_an_inbox_question_is_answered_once_in_the_same_instagram_conversation(client, runtime, fake_inbox,
                                                                               monkeypatch):
    monkeypatch.setattr(clock, "now", lambda: NOW)
    body = (PAYLOADS / "inbox/umnico_message_incoming_uk.json").read_bytes()
    for _ in range(2):  # umnico delivering the same message twice
        client.post("/hooks/shop-inbox?token=inbox-secret", data=body, content_type="application/json")
    run_worker(runtime)

    [call] = fake_inbox.sent("64950001")
    assert call.body["message"] == {"text": "Вітаємо, olena.solodka! Наполеон 2 кг — 1400 грн 🎂"}
    assert (call.body["source"], call.body["userId"]) == ("76920001", 18)
    assert call.body["customId"].startswith("crmbridge:")
    # the webhook said which channel the client wrote through: no lookup of the sources
    assert fake_inbox.received("GET", r"/v1\.3/messaging/64950001/sources") == []
