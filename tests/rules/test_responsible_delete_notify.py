"""The verbs set_responsible, delete_entity and notify: options, planning (the steps' arguments),
the dry run, start-up refusal (file:line) for CRMs that cannot do them, and one webhook through the
worker to a local Bitrix24."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli import print_plan
from config.loader import ConfigErrors
from config.settings import Settings
from connectors.base import Connection, Entity, Event
from rules import MODULES
from rules.engine import plan
from rules.files import load_rules
from runtime import load_configuration
from tests.b24_app import DEAL_ADD
from tests.b24_app import b24_app as make_b24_app
from tests.conftest import run_worker
from tests.fakes_bitrix24 import FakeBitrix24
from pipeline import execute

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONNECTIONS = {"b24": Connection("b24", "bitrix24"), "tg": Connection("tg", "telegram")}


def ruleset(tmp_path: Path, text: str):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path)


def deal_event(kind: str = "entity.created") -> tuple[Event, dict]:
    event = Event(id="b24:1", connection="b24", source="bitrix24", kind=kind, entity=Entity("deal", "410"),
                  data={}, raw={}, occurred_at=NOW.isoformat())
    entity = {"type": "deal", "id": "410", "name": "Торт на весілля", "contacts": ["84"],
              "responsible": {"id": "7", "name": "Иван Петренко"}}
    return event, entity


RULES = """
defaults: {connection: b24}
rules:
  - name: hand over
    on: {event: entity.created}
    do:
      - set_responsible: "Ольга Коваленко"
      - set_responsible: {user: "{{ entity.responsible.id }}", entity: "contact:{{ entity.contacts[0] }}"}
      - notify: "Нова угода: {{ entity.name }}"
      - notify: {user: 1, text: "NPS 10 від {{ entity.name }} 🎉"}
      - delete_entity: {}
      - delete_entity: "contact:{{ entity.contacts[0] }}"
"""


def test_steps_carry_the_rendered_user_text_and_record(tmp_path):
    result = plan(*deal_event(), ruleset(tmp_path, RULES), NOW, MODULES)
    assert result.errors == []
    deal, contact = {"type": "deal", "id": "410"}, {"type": "contact", "id": "84"}
    assert [(a.connection, a.method, a.args) for a in result.actions] == [
        ("b24", "set_responsible", {"entity": deal, "user": "Ольга Коваленко"}),
        ("b24", "set_responsible", {"entity": contact, "user": "7"}),
        ("b24", "notify", {"user": "7", "text": "Нова угода: Торт на весілля"}),   # the record's responsible
        ("b24", "notify", {"user": "1", "text": "NPS 10 від Торт на весілля 🎉"}),
        ("b24", "delete_entity", {"entity": deal}),
        ("b24", "delete_entity", {"entity": contact}),
    ]


def test_the_dry_run_shows_each_step_and_calls_nothing(tmp_path):
    shown = print_plan(plan(*deal_event(), ruleset(tmp_path, RULES), NOW, MODULES)).splitlines()
    assert "  would call b24.notify(user='7', text='Нова угода: Торт на весілля')" in shown
    assert "  would call b24.set_responsible(entity={'type': 'contact', 'id': '84'}, user='7')" in shown
    assert "  would call b24.delete_entity(entity={'type': 'deal', 'id': '410'})" in shown


def test_an_empty_user_is_an_error_of_the_rule_with_its_line(tmp_path):
    rules = ruleset(tmp_path, """
defaults: {connection: b24}
rules:
  - name: empty
    on: {event: entity.created}
    do:
      - set_responsible: "{{ entity.fields['Менеджер'] }}"
      - notify: {user: "{{ entity.fields['Менеджер'] }}", text: "x"}
      - notify: {user: 1, text: "   "}
""")
    event, entity = deal_event()
    entity = {**entity, "fields": {"Менеджер": ""}, "responsible": None}
    result = plan(event, entity, rules, NOW, MODULES)
    assert result.actions == []
    assert [message for _, message in result.errors] == [
        ("r.yaml:7: set_responsible: user is empty after rendering the template; "
         "expected a user name or id"),
        "r.yaml:8: notify: no user to notify: user is empty and the record has no responsible user",
        "r.yaml:9: notify: text is empty after rendering the template",
    ]


def test_options_say_what_was_expected(tmp_path):
    with pytest.raises(ConfigErrors) as exc:
        ruleset(tmp_path, """
rules:
  - name: bad
    on: {event: entity.created, connection: b24}
    do:
      - notify: {user: 5}
      - set_responsible: {}
      - delete_entity: {stage: Lost}
""")
    assert str(exc.value).splitlines() == [
        'r.yaml:6: rule "bad" → do[0] → notify → text: required; expected the notification text (a template)',
        ('r.yaml:7: rule "bad" → do[1] → set_responsible → user: required; expected a user name as the CRM '
         "shows it, an id, or a template"),
        "r.yaml:8: rule \"bad\" → do[2] → delete_entity → unknown key 'stage'; expected one of: connection",
        "3 errors in 1 file; crmbridge did not start.",
    ]


# --- start-up refusal ------------------------------------------------------------------------------

def test_crms_that_cannot_do_a_verb_are_refused_at_start_up_with_file_and_line(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text("""
connections:
  amo: {type: amocrm, webhook_secret: "${S}"}
  b24: {type: bitrix24, webhook_secret: "${S}"}
  pf: {type: planfix, webhook_secret: "${S}"}
  bot: {type: telegram, webhook_secret: "${S}"}
""", encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text("""rules:
  - name: amo deal lost
    on: {event: stage.changed, connection: amo}
    do:
      - set_responsible: "Olena Kovalenko"
      - delete_entity: {}
  - name: pf task done
    on: {event: stage.changed, connection: pf}
    do:
      - set_responsible: "5"
      - delete_entity: {}
      - notify: "Задачу завершено"
  - name: amo tells b24
    on: {event: entity.created, connection: amo}
    do:
      - notify: {connection: b24, user: 1, text: "Нова угода в amoCRM"}
      - notify: {user: 5, text: "x"}
  - name: from the bot
    on: {event: message.received, connection: bot}
    do:
      - notify: "a message"
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as exc:
        load_configuration(Settings(config_dir=tmp_path, environ={"S": "s"}))
    lines = str(exc.value).splitlines()
    assert lines[-1] == "3 errors in 1 file; crmbridge did not start."
    assert [line.split(": rule ")[0].rsplit("/", 1)[-1] for line in lines[:-1]] == ["r.yaml:6", "r.yaml:12", "r.yaml:17"]
    assert lines[0].endswith(
        'rule "amo deal lost": delete_entity → not supported for amocrm (connection \'amo\'): amoCRM API v4 cannot '
        "delete leads, contacts or companies (leads-api, contacts-api, companies-api document list, get, add and "
        "edit only); move the deal to a closed stage (move_to_stage) or mark it with add_tags instead")
    assert 'rule "pf task done": notify → not supported for planfix (connection \'pf\'): ' in lines[1]
    assert lines[1].endswith("send a Telegram message instead (send_message: {connection, chat, text})")
    assert 'rule "amo tells b24": notify → not supported for amocrm (connection \'amo\'): amoCRM API v4 has no ' \
           "method that notifies a user" in lines[2]


def test_a_rule_whose_on_names_no_connection_is_checked_against_every_crm(tmp_path):
    """`on:` without a connection may be any CRM's event: a verb one of them cannot do is refused."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text("""
connections:
  amo: {type: amocrm, webhook_secret: "${S}"}
  b24: {type: bitrix24, webhook_secret: "${S}"}
""", encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text("""rules:
  - name: any lost deal
    on: {event: stage.changed, stage: Lost}
    do: [{delete_entity: {}}]
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as exc:
        load_configuration(Settings(config_dir=tmp_path, environ={"S": "s"}))
    [error, summary] = str(exc.value).splitlines()
    assert "r.yaml:4: rule \"any lost deal\": delete_entity → not supported for amocrm (connection 'amo')" in error
    assert summary == "1 error in 1 file; crmbridge did not start."


# --- through the worker ----------------------------------------------------------------------------

E2E_RULES = """
defaults: {connection: shop-b24}
rules:
  - name: New deal → Ivan, tell him, drop the test contact
    on: {event: entity.created}
    do:
      - set_responsible: "Иван Петренко"
      - notify: {user: "Иван Петренко", text: "Нова угода: {{ entity.name }}"}
      - delete_entity: "contact:{{ entity.contacts[0] }}"
"""


@pytest.fixture
def fake_b24():
    server = FakeBitrix24().start()
    server.add("deal", {"ID": "410", "TITLE": "Торт на весілля", "STAGE_ID": "NEW", "CATEGORY_ID": "0",
                        "ASSIGNED_BY_ID": "1", "CONTACT_ID": "84"})
    server.add("contact", {"ID": "84", "NAME": "Тест", "LAST_NAME": "Тестович", "ASSIGNED_BY_ID": "1"})
    yield server
    server.stop()


@pytest.fixture
def b24_runtime(tmp_path, fake_b24, redis_db):
    return make_b24_app(tmp_path, fake_b24, E2E_RULES)


def test_a_new_deal_gets_its_responsible_a_notification_and_its_contact_deleted_once(b24_runtime, fake_b24):
    client = b24_runtime.test_client()
    for _ in range(2):   # Bitrix24 delivering the same event twice
        assert client.post("/hooks/shop-b24", data=DEAL_ADD,
                           content_type="application/x-www-form-urlencoded").status_code < 300
        run_worker(b24_runtime.extensions["crmbridge"])
    [update] = fake_b24.method_calls("crm.deal.update")
    assert update.body == {"id": 410, "fields": {"ASSIGNED_BY_ID": 7}}
    [notice] = fake_b24.method_calls("im.notify.system.add")
    assert notice.body == {"USER_ID": 7, "MESSAGE": "Нова угода: Торт на весілля"}
    [delete] = fake_b24.method_calls("crm.contact.delete")
    assert delete.body == {"id": 84} and 84 not in fake_b24.records["contact"]
    assert {"set_responsible", "delete_entity"} <= execute.REPEATABLE_METHODS
    assert "notify" not in execute.REPEATABLE_METHODS
