"""The pipeline's steps run as the executor runs them (tests/steps.py), on the clients' verbs
against the local fakes: lookup_field on amoCRM's lists, start_next_task creating the next task of
a Planfix project, move_forward without the verbs it needs, and the step registry."""
from __future__ import annotations

import pytest

from connectors import amocrm, planfix
from connectors.base import Connection, Entity, PermanentApiError
from pipeline.steps import STEPS
from tests.fakes import FakeAmo
from tests.fakes_planfix import FakePlanfix
from tests.steps import run_step

BLOGGERS = 4589


@pytest.fixture
def amo(redis_db):
    server = FakeAmo().start()
    server.fields.append({"id": 9001, "name": "ФИО блогера 1", "type": "text"})
    server.catalogs = [{"id": BLOGGERS, "name": "Блогеры", "type": "regular", "sort": 10}]
    for name in ("Иванова Мария Сергеевна", "Иваненко Пётр Олегович", "Смирнов Алексей Игоревич"):
        server.add_catalog_element(BLOGGERS, name)
    server.add_lead({"id": 77, "name": "Весна", "status_id": 142, "pipeline_id": 2116})
    conn = Connection(name="amo", type="amocrm", base_url=server.url, credentials={"token": "T"})
    yield server, amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    server.stop()


def lookup(client, value: str, **notes) -> dict:
    return run_step("lookup_field", client, entity=Entity("lead", "77"), field="ФИО блогера 1", value=value,
                    catalog="Блогеры", **notes)


def test_lookup_field_sets_the_one_entry_keeps_a_full_name_and_notes_several_or_none(amo):
    server, client = amo
    assert lookup(client, "смир") == {"set": "Смирнов Алексей Игоревич"}
    [write] = server.received("PATCH", "/api/v4/leads/77")
    assert write.body == {"custom_fields_values": [{"field_id": 9001, "values": [{"value": "Смирнов Алексей Игоревич"}]}]}
    assert lookup(client, "Смирнов Алексей Игоревич") == {"kept": "Смирнов Алексей Игоревич"}
    assert lookup(client, "ива", ambiguous="{matches} — {value}?") == {
        "matches": ["Иванова Мария Сергеевна", "Иваненко Пётр Олегович"]}
    assert lookup(client, "Кузн") == {"matches": []}
    notes = [n["params"]["text"] for c in server.received("POST", "/api/v4/leads/notes") for n in c.body]
    assert notes == ["Иванова Мария Сергеевна, Иваненко Пётр Олегович — ива?",
                     "«ФИО блогера 1»: no entry of «Блогеры» starts with «Кузн»."]
    assert len(server.received("PATCH", "/api/v4/leads/77")) == 1


@pytest.fixture
def pf(redis_db):
    server = FakePlanfix()
    server.custom_fields["task"] += [{"id": 130, "name": "Порядок", "type": 1}, {"id": 131, "name": "Чат", "type": 0}]
    server.start()
    conn = Connection(name="pf", type="planfix", base_url=f"{server.url}/rest", credentials={"token": "T"})
    yield server, planfix.Client(conn, store=redis_db, key_prefix="crmbridge-test:")
    server.stop()


def test_lookup_field_on_a_crm_without_catalogs_says_so(pf):
    with pytest.raises(PermanentApiError, match="pf: this CRM has no catalogs to look 'Блогер' up in"):
        run_step("lookup_field", pf[1], entity=Entity("task", "1"), field="Блогер", value="смир", catalog="Б")


CREATE = [{"name": "Комунікація", "responsible": None, "due": None, "fields": {}},
          {"name": "Рубрикатор", "responsible": "Олена Коваленко", "due": "2026-12-04T17:00:00+02:00",
           "fields": {"Чат": "-100"}}]


def test_start_next_task_creates_the_next_one_of_the_list_once(pf):
    server, client = pf
    server.add("task", {"id": 500, "name": "Комунікація", "status": {"id": 3}, "processId": 7, "project": {"id": 77},
                        "customFieldData": [{"field": {"id": 130, "name": "Порядок"}, "value": 4}]})

    def complete() -> dict:
        return run_step("start_next_task", client, entity=Entity("task", "500"), status="В роботі",
                        order_field="Порядок", create=CREATE, copy_fields=[])
    made = complete()
    assert made["name"] == "Рубрикатор" and made["created"] is True
    [created] = server.received("POST", "/rest/task/")
    assert created.body == {"name": "Рубрикатор", "project": {"id": 77}, "status": {"id": 2}, "processId": 7,
                            "endDateTime": {"datetime": "2026-12-04T15:00Z"}, "assignees": {"users": [{"id": "user:5"}]},
                            "customFieldData": [{"field": {"id": 130}, "value": 5}, {"field": {"id": 131}, "value": "-100"}]}
    # the created task now follows this one, already in work: a repeat leaves it, never creates it twice
    assert complete()["next"] == made["next"]
    assert len(server.received("POST", "/rest/task/")) == 1


def test_a_step_whose_client_lacks_a_verb_is_refused(pf):
    with pytest.raises(PermanentApiError, match="'pf' cannot move_forward: its client has no find_stage, "
                                                "read_stage, stage_order"):
        run_step("move_forward", pf[1], entity=Entity("task", "1"), stage="В роботі")
    assert pf[0].calls == []


def test_record_only_steps_only_log_their_calls(caplog):
    client = amocrm.Client(Connection(name="newcomer", type="amocrm", base_url="https://x.amocrm.ru"))
    caplog.set_level("INFO")
    assert run_step("move_forward", client, entity=Entity("lead", "5"), stage="Won") == {"moved": True}
    assert "would call PATCH https://x.amocrm.ru/api/v4/leads/5" in caplog.text
    pf_client = planfix.Client(Connection(name="pf0", type="planfix", base_url="https://x.planfix.com/rest"))
    assert run_step("start_next_task", pf_client, entity=Entity("task", "5"), status="В роботі") == {
        "next": None, "reason": "record-only"}


def test_the_registry_names_each_step_by_its_method():
    assert {m: s.METHOD for m, s in STEPS.items()} == {m: m for m in STEPS}


def test_a_step_a_crm_cannot_run_is_refused_at_start_up_with_file_and_line(tmp_path):
    """A step's REQUIRES against the client's capabilities (rules/_verb_support.py), as for verbs."""
    from config.loader import ConfigErrors
    from config.settings import Settings
    from runtime import load_configuration
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text("""
connections:
  amo: {type: amocrm, webhook_secret: "${S}"}
  pf: {type: planfix, webhook_secret: "${S}"}
""", encoding="utf-8")
    (tmp_path / "rules" / "r.yaml").write_text("""rules:
  - name: amo task done
    on: {event: task.completed, connection: amo}
    do:
      - start_next_task: {status: "В работе"}
      - track_time: {stage: "В работе", field: "Часы"}
  - name: pf typed
    on: {event: field.changed, connection: pf}
    do:
      - lookup_field: {field: "Блогер", catalog: "Блогеры"}
      - start_next_task: {status: "В роботі"}
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as exc:
        load_configuration(Settings(config_dir=tmp_path, environ={"S": "s"}))
    lines = str(exc.value).splitlines()
    assert lines[-1] == "2 errors in 1 file; crmbridge did not start."
    assert lines[0].endswith('r.yaml:5: rule "amo task done": start_next_task → not supported for amocrm '
                             "(connection 'amo'): amoCRM tasks belong to records, not to ordered projects; "
                             "start_next_task reads a Planfix project's tasks")
    assert lines[1].endswith('r.yaml:10: rule "pf typed": lookup_field → not supported for planfix (connection '
                             "'pf'): Planfix has no catalogs (lists) to look names up in here; amoCRM's lists "
                             "(«Списки») can be")
