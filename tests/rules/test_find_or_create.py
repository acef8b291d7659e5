"""find_or_create: planned as one step from an inbox message or a form, with Ukrainian and Russian
names; refused at start-up with file:line when `by:` is unknown, the sender's field is not named,
or the connection is not a CRM that can search. No I/O."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from config.connections import Connections
from config.loader import ConfigErrors
from connectors import CONNECTORS
from connectors.base import Connection, Entity, Event
from rules import MODULES, find_or_create
from rules.engine import plan
from rules.files import load_rules

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CONNECTIONS = {"shop-inbox": Connection("shop-inbox", "inbox"), "shop": Connection("shop", "planfix"),
               "amo": Connection("amo", "amocrm"), "forms": Connection("forms", "forms")}


def ruleset(tmp_path, text):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path)


def inbox_event() -> Event:
    return Event(id="shop-inbox:umnico:1", connection="shop-inbox", source="inbox", kind="message.received",
                 entity=Entity("conversation", "64950001"),
                 data={"text": "Скільки коштує торт?", "account": {"id": "111401", "name": "sweet.kyiv"},
                       "from": {"id": "77", "name": "Олена Коваленко", "link": "https://instagram.com/olena.k"}},
                 raw={}, occurred_at=NOW.isoformat())


def test_an_inbox_message_plans_one_step_on_the_crm_without_a_link(tmp_path):
    rules = ruleset(tmp_path, """
rules:
  - name: B1 first message → contact
    on: {event: message.received, connection: shop-inbox}
    do:
      - find_or_create:
          connection: shop
          by: inbox_sender
          value: "{{ data.from.link }}"
          name: "{{ data.from.name }}"
          fields: {"Instagram акаунт": "{{ data.from.link }}", "Акаунт": "{{ data.account.name }}"}
""")
    event = inbox_event()
    [action] = plan(event, {"type": "conversation", "id": "64950001"}, rules, NOW, MODULES).actions
    assert (action.connection, action.method) == ("shop", "find_or_create")
    assert action.args == {"by": "inbox_sender", "value": "https://instagram.com/olena.k", "field": "Instagram акаунт",
                           "name": "Олена Коваленко",
                           "fields": {"Instagram акаунт": "https://instagram.com/olena.k", "Акаунт": "sweet.kyiv"}}


def test_a_deal_event_links_the_contact_to_its_deal_with_a_russian_name(tmp_path):
    rules = ruleset(tmp_path, """
rules:
  - name: E1 lead intake
    on: {event: entity.created, connection: amo}
    do: [{find_or_create: {by: phone, value: "{{ entity.fields['Телефон'] }}", name: "{{ entity.fields['Имя'] }}  Петров"}}]
""")
    event = Event(id="amo:1", connection="amo", source="amocrm", kind="entity.created", entity=Entity("lead", "555"),
                  data={}, raw={}, occurred_at=NOW.isoformat())
    entity = {"type": "lead", "id": "555", "fields": {"Телефон": "8 (912) 345-67-89", "Имя": "Иван"}}
    [action] = plan(event, entity, rules, NOW, MODULES).actions
    assert action.args == {"by": "phone", "value": "8 (912) 345-67-89", "name": "Иван Петров",
                           "entity": {"type": "lead", "id": "555"}}


def test_an_empty_value_is_a_rule_error_not_a_contact(tmp_path):
    rules = ruleset(tmp_path, """
rules:
  - name: form
    on: {event: form.submitted, connection: forms}
    do: [{find_or_create: {connection: amo, by: email, value: "{{ data.answers['Email'] }}", link: false}}]
""")
    event = Event(id="f:1", connection="forms", source="forms", kind="form.submitted", entity=Entity("form", "1"),
                  data={"answers": {"Email": ""}}, raw={}, occurred_at=NOW.isoformat())
    result = plan(event, {}, rules, NOW, MODULES)
    assert not result.actions
    assert result.errors[0][1].endswith("r.yaml:5: find_or_create: find_or_create: value rendered empty: nothing to match by email")


def test_an_unknown_by_is_refused_with_its_line(tmp_path):
    with pytest.raises(ConfigErrors) as exc:
        ruleset(tmp_path, """
rules:
  - name: x
    on: {event: message.received, connection: shop-inbox}
    do:
      - find_or_create: {connection: shop, by: telegram, value: "{{ data.from.id }}"}
""")
    assert "r.yaml:6" in str(exc.value) and "by: expected phone or email or inbox_sender, found 'telegram'" in str(exc.value)


def test_start_up_refuses_a_connection_that_cannot_search_and_a_sender_without_a_field(tmp_path):
    rules = ruleset(tmp_path, """
rules:
  - name: no crm
    on: {event: message.received, connection: shop-inbox}
    do:
      - find_or_create: {by: email, value: "{{ data.text }}"}
  - name: no field
    on: {event: message.received, connection: shop-inbox}
    do:
      - find_or_create: {connection: shop, by: inbox_sender, value: "{{ data.from.link }}", fields: {"Ім'я": "{{ data.from.name }}"}}
  - name: fine
    on: {event: message.received, connection: shop-inbox}
    do:
      - find_or_create: {connection: amo, by: inbox_sender, value: "{{ data.from.link }}", field: Instagram}
""")
    errors = find_or_create.unsupported(rules.rules, Connections(connections=CONNECTIONS), CONNECTORS)
    assert [(e.path.rsplit("/", 1)[-1], e.line) for e in errors] == [("r.yaml", 6), ("r.yaml", 10)]
    assert errors[0].message == ('rule "no crm": find_or_create → by: email not supported for inbox '
                                 "(connection 'shop-inbox'); name the CRM with connection:")
    assert "by: inbox_sender needs `field:`" in errors[1].message


ORDER_RULE = """
defaults: {calendar: shop}
rules:
  - name: B6
    on: {event: message.received, connection: shop-inbox}
    do:
      - find_or_create:
          connection: shop
          kind: order
          by: inbox_sender
          value: "{{ data.from.link }}"
          field: Instagram
          order: {field: Розмова}
          response: {metric: response_seconds, dimensions: {account: "{{ data.account.name }}"}, %s}
"""


def test_a_working_time_response_carries_the_rules_calendar(tmp_path):
    from rules.calendar import WorkingCalendar
    shop = {"timezone": "Europe/Kyiv", "hours": {"mon-sat": "10:00-19:00"}}
    (tmp_path / "r.yaml").write_text(ORDER_RULE % "time: working", encoding="utf-8")
    rules = load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path, calendars={"shop": shop})
    [action] = plan(inbox_event(), {"type": "conversation", "id": "64950001"}, rules, NOW, MODULES).actions
    response = action.args["response"]
    assert response["dimensions"] == {"account": "sweet.kyiv"} and response["zone"] == "Europe/Kyiv"
    assert WorkingCalendar.from_config(response["calendar"]) == WorkingCalendar.from_config(shop)


def test_a_wrong_response_time_is_refused_with_its_line(tmp_path):
    with pytest.raises(ConfigErrors) as exc:
        (tmp_path / "r.yaml").write_text(ORDER_RULE % "time: work", encoding="utf-8")
        load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path,
                   calendars={"shop": {"timezone": "Europe/Kyiv"}})
    assert "r.yaml:14: rule \"B6\" → do[0] → find_or_create → response → time: expected elapsed (every second) or working (the rule calendar's hours only), found 'work'" in str(exc.value)
