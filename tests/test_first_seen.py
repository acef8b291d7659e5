"""First-seen records (docs/rules.md, "First-seen records"): a record crmbridge has no snapshot of
fires its stage's rules when it is created in the stage (its own entity.created: amoCRM `add`,
Bitrix24 ONCRMDEALADD, Planfix task.created) or entering it (a first update: amoCRM `update`,
Bitrix24 ONCRMDEALUPDATE, Planfix task.updated, derived as stage.changed with first_seen), once.
Real wire formats go through each connector's parse and the worker's jobs (cli.py simulate)."""
from __future__ import annotations

from pathlib import Path

from config.settings import Settings
from connectors.base import Entity, Event
from pipeline.snapshot import derive
from simulate.runner import Simulation
from simulate.scenario import load

CONNECTIONS = """
calendars:
  office: {timezone: Europe/Kyiv, hours: {mon-fri: "10:00-19:00"}}
connections:
  amo: {type: amocrm, base_url: "https://x.amocrm.ru", webhook_secret: "${S}", credentials: {token: "${S}"}, calendar: office}
  b24: {type: bitrix24, base_url: "https://x.bitrix24.ua/rest/1/abc/", webhook_secret: "${S}", credentials: {webhook: "${S}"}, calendar: office}
  pf: {type: planfix, base_url: "https://x.planfix.com/rest", webhook_secret: "${S}", credentials: {token: "${S}"}, calendar: office}
"""
RULES = """
rules:
  - name: entering
    on: {event: stage.changed, stage: "Бриф получен"}
    do: [{add_note: "entered {{ entity.stage.name }} first_seen={{ data.first_seen }}"}]
  - name: created
    on: {event: entity.created, stage: "Новий"}
    do: [{add_note: "created in {{ entity.stage.name }}"}]
"""
META = {"pipelines": [{"id": 2116, "name": "Продажі", "stages": {10216993: "Новий", 10216994: "Бриф получен"}}]}


def event(kind: str, data: dict | None = None) -> Event:
    return Event("amo:1", "amo", "amocrm", kind, Entity("lead", "1"), data or {}, None, "2026-12-07T09:00:00+00:00")


def test_a_first_update_is_the_record_entering_its_stage():
    current = {"stage": {"id": "10216994", "name": "Бриф получен"}, "fields": {"A": 1}}
    [entering] = derive(event("entity.updated"), None, current)
    assert entering.kind == "stage.changed" and entering.id.startswith("amo:1|stage.changed|")
    assert entering.data["stage"] == current["stage"] and entering.data["previous_stage"] is None
    assert entering.data["first_seen"] is True
    # the same first update derives the same event (a redelivery is a duplicate, not a second entry)
    assert derive(event("entity.updated"), None, current)[0].id == entering.id


def test_no_stage_no_entry_and_created_or_moved_records_are_their_own_event():
    assert derive(event("entity.updated"), None, {"fields": {"A": 1}}) == []          # a contact: no stage
    current = {"stage": {"id": "10216993"}}
    assert derive(event("entity.created"), None, current) == []                       # created in it: itself
    assert derive(event("stage.changed", {"stage": {"id": "10216993"}}), None, current) == []
    # seen before in the same stage: nothing derived (no second entry)
    assert derive(event("entity.updated"), {"stage": {"id": "10216993"}, "fields": {}}, {**current, "fields": {}}) == []


def scenario(tmp_path: Path, steps: str, crm: str = "") -> list:
    config = tmp_path / "config"
    (config / "rules").mkdir(parents=True)
    (config / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (config / "rules" / "r.yaml").write_text(RULES, encoding="utf-8")
    path = tmp_path / "s.yaml"
    path.write_text(f"start: 2026-12-07 11:00\n{crm}\nsteps:\n{steps}", encoding="utf-8")
    outcome = Simulation(load(path), Settings(config_dir=config, environ={}), out=lambda line: None).run()
    return [(c.connection, c.args["entity"], c.args["text"]) for c in outcome.calls if c.verb == "add_note"]


def test_amocrm_add_is_created_in_the_stage_and_a_first_update_is_entering_it(tmp_path: Path):
    add = "  - webhook: amo\n    form: {leads: {add: [{id: 2, name: B, status_id: 10216993, pipeline_id: 2116}]}, account: {id: 1}}\n"
    update = ("  - webhook: amo\n    form: {leads: {update: [{id: 1, name: A, status_id: 10216994, pipeline_id: 2116, "
              "last_modified: %d}]}, account: {id: 1}}\n")
    crm = "crm:\n  amo:\n    pipelines: [{id: 2116, name: Продажі, stages: {10216993: Новий, 10216994: Бриф получен}}]\n"
    notes = scenario(tmp_path, add + update % 1796630400 + update % 1796630460, crm)
    assert notes == [("amo", "lead:2", "created in Новий"),
                     ("amo", "lead:1", "entered Бриф получен first_seen=True")]   # once: the second update is not an entry


def test_bitrix24_deal_add_and_first_update(tmp_path: Path):
    """ONCRMDEALADD / ONCRMDEALUPDATE carry only the id (tests/payloads/bitrix24/*.form): the stage
    comes from the read of the deal."""
    crm = ("crm:\n  b24:\n    records:\n      deal:7405: {stage: Новий}\n      deal:759: {stage: Бриф получен}\n")
    steps = ("  - webhook: b24\n    body: \"event=ONCRMDEALADD&event_handler_id=975&data%5BFIELDS%5D%5BID%5D=7405&ts=1766047124"
             "&auth%5Bapplication_token%5D=t\"\n"
             "  - webhook: b24\n    body: \"event=ONCRMDEALUPDATE&event_handler_id=201&data%5BFIELDS%5D%5BID%5D=759&ts=1736405807"
             "&auth%5Bapplication_token%5D=t\"\n")
    assert scenario(tmp_path, steps, crm) == [("b24", "deal:7405", "created in Новий"),
                                              ("b24", "deal:759", "entered Бриф получен first_seen=True")]


def test_planfix_task_created_and_first_update(tmp_path: Path):
    steps = ("  - webhook: pf\n    json: {event: task.created, task: {id: '10', name: X, status: Новий}}\n"
             "  - webhook: pf\n    json: {event: task.updated, task: {id: '11', name: Y, status: Бриф получен}}\n")
    assert scenario(tmp_path, steps) == [("pf", "task:10", "created in Новий"),
                                         ("pf", "task:11", "entered Бриф получен first_seen=True")]
