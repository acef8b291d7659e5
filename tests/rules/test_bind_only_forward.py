"""create_task `bind:` (a task bound to the deal's contacts and company) and move_to_stage
`only_forward` on Bitrix24: the planned arguments, the start-up refusals (file:line) for CRMs that
cannot do them, and one webhook through the worker to a local Bitrix24."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

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

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CONNECTIONS = {"b24": Connection("b24", "bitrix24")}


def ruleset(tmp_path: Path, text: str):
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    return load_rules(tmp_path, MODULES, connections=CONNECTIONS, base=tmp_path)


def deal_event(**entity) -> tuple[Event, dict]:
    event = Event(id="b24:1", connection="b24", source="bitrix24", kind="stage.changed", entity=Entity("deal", "410"),
                  data={}, raw={}, occurred_at=NOW.isoformat())
    record = {"type": "deal", "id": "410", "name": "Весілля", "contacts": ["84"], "company": {"id": "9"},
              "responsible": {"id": "7"}, "fields": {"Partner": "31"}, **entity}
    return event, record


RULES = """
defaults: {connection: b24}
rules:
  - name: D5 contract
    on: {event: stage.changed}
    do:
      - create_task: {text: "Prepare the contract", bind: [contact, company]}
      - create_task: {text: "Call the partner", bind: [company, "contact:{{ entity.fields['Partner'] }}", "company:12"]}
      - create_task: "No bind"
      - move_to_stage: {stage: Paid, only_forward: true}
"""
DEAL, CONTACT, COMPANY = {"type": "deal", "id": "410"}, {"type": "contact", "id": "84"}, {"type": "company", "id": "9"}


def test_bind_words_become_the_deals_contacts_and_company(tmp_path):
    result = plan(*deal_event(), ruleset(tmp_path, RULES), NOW, MODULES)
    assert result.errors == []
    tasks = [a.args for a in result.actions if a.method == "create_task"]
    assert tasks[0]["entity"] == DEAL
    # the primary contact the worker read (CONTACT_ID), then every contact linked now, then the company
    assert tasks[0]["bind"] == [CONTACT, {"contacts_of_deal": "410"}, COMPANY]
    assert tasks[1]["bind"] == [COMPANY, {"type": "contact", "id": "31"}, {"type": "company", "id": "12"}]
    assert "bind" not in tasks[2]   # no bind: the step's arguments are as before
    # only_forward plans the step that reads the stage order first (pipeline/steps/move_forward.py)
    [move] = [a for a in result.actions if a.method == "move_forward"]
    assert move.args == {"entity": DEAL, "stage": "Paid", "pipeline": None}


@pytest.mark.parametrize("record, expected", [
    ({"company": None}, [CONTACT, {"contacts_of_deal": "410"}]),               # a deal without company
    ({"company": {"id": "0"}}, [CONTACT, {"contacts_of_deal": "410"}]),
    ({"contacts": []}, [COMPANY]),                                               # nor contacts
    ({"contacts": [], "company": None}, []),
])
def test_a_word_with_nothing_to_bind_is_left_out(tmp_path, record, expected):
    result = plan(*deal_event(**record), ruleset(tmp_path, RULES), NOW, MODULES)
    assert result.errors == []
    assert result.actions[0].args["bind"] == expected


def test_an_explicit_record_that_renders_empty_is_left_out(tmp_path):
    result = plan(*deal_event(fields={"Partner": ""}), ruleset(tmp_path, RULES), NOW, MODULES)
    assert result.errors == []
    assert result.actions[1].args["bind"] == [COMPANY, {"type": "company", "id": "12"}]


def test_a_bind_word_that_is_not_known_is_refused_with_its_line(tmp_path):
    with pytest.raises(ConfigErrors) as exc:
        ruleset(tmp_path, """
rules:
  - name: bad
    on: {event: stage.changed, connection: b24}
    do:
      - create_task: {text: x, bind: [contact, manager]}
      - create_task: {text: x, bind: contact}
""")
    lines = str(exc.value).splitlines()
    assert lines[0] == ('r.yaml:6: rule "bad" → do[0] → create_task → bind: expected a list of contact, company '
                        "or 'contact:12', found ['contact', 'manager']")
    assert lines[1].startswith('r.yaml:7: rule "bad" → do[1] → create_task → bind')
    assert lines[-1] == "2 errors in 1 file; crmbridge did not start."


# --- start-up refusal ------------------------------------------------------------------------------

def test_bind_and_only_forward_are_refused_at_start_up_where_the_crm_cannot_do_them(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text("""
connections:
  amo: {type: amocrm, webhook_secret: "${S}"}
  b24: {type: bitrix24, webhook_secret: "${S}"}
  pf: {type: planfix, webhook_secret: "${S}"}
""", encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text("""rules:
  - name: b24 both
    on: {event: stage.changed, connection: b24}
    do:
      - create_task: {text: x, bind: [contact, company]}
      - move_to_stage: {stage: Paid, only_forward: true}
  - name: amo bind
    on: {event: stage.changed, connection: amo}
    do:
      - create_task: {text: x}
      - create_task: {text: x, bind: [contact]}
  - name: pf bind and forward by connection
    on: {event: stage.changed, connection: b24}
    do:
      - create_task: {text: x, bind: [company], connection: pf}
      - move_to_stage: {stage: Done, only_forward: true, connection: pf}
      - move_to_stage: {stage: Done, only_forward: false, connection: pf}
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as exc:
        load_configuration(Settings(config_dir=tmp_path, environ={"S": "s"}))
    lines = str(exc.value).splitlines()
    assert lines[-1] == "3 errors in 1 file; crmbridge did not start."
    assert [line.split(": rule ")[0].rsplit("/", 1)[-1] for line in lines[:-1]] == ["r.yaml:11", "r.yaml:15",
                                                                                    "r.yaml:16"]
    assert lines[0].endswith('rule "amo bind": create_task → bind: not supported for amocrm (connection \'amo\'); '
                             "its tasks belong to one record only; Bitrix24 binds a task to several")
    assert "create_task → bind: not supported for planfix (connection 'pf')" in lines[1]
    assert lines[2].endswith("move_to_stage → only_forward: not supported for planfix (connection 'pf'); "
                             "only amoCRM and Bitrix24 read their stages' order")


# --- through the worker ----------------------------------------------------------------------------

E2E_RULES = """
defaults: {connection: shop-b24}
rules:
  - name: D5 new deal → contract task, never back
    on: {event: entity.created}
    do:
      - create_task: {text: "Prepare the contract", bind: [contact, company]}
      - move_to_stage: {stage: "Подготовка документов", only_forward: true}
"""


@pytest.fixture
def fake_b24():
    server = FakeBitrix24().start()
    server.add("deal", {"ID": "410", "TITLE": "Весілля", "STAGE_ID": "EXECUTING", "CATEGORY_ID": "0",
                        "ASSIGNED_BY_ID": "7", "CONTACT_ID": "84", "CONTACT_IDS": [84, 85], "COMPANY_ID": "9"})
    yield server
    server.stop()


@pytest.fixture
def b24_app(tmp_path, fake_b24, redis_db):
    return make_b24_app(tmp_path, fake_b24, E2E_RULES)


def test_a_new_deal_gets_a_task_bound_to_its_contacts_and_company_and_is_not_moved_back(b24_app, fake_b24):
    client = b24_app.test_client()
    assert client.post("/hooks/shop-b24", data=DEAL_ADD,
                       content_type="application/x-www-form-urlencoded").status_code < 300
    run_worker(b24_app.extensions["crmbridge"])
    [task] = fake_b24.tasks.values()
    assert task["title"] == "Prepare the contract"
    assert task["ufCrmTask"] == ["D_410", "C_84", "C_85", "CO_9"]
    assert fake_b24.method_calls("crm.deal.update") == [] and fake_b24.method_calls("crm.item.update") == []
    assert fake_b24.records["deal"][410]["STAGE_ID"] == "EXECUTING"   # "В работе" is past "Подготовка документов"
