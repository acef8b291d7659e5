"""amoCRM: recorded webhooks → Events, and the API v4 client against a local fake."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from connectors import amocrm
from connectors.base import (BadPayload, Connection, Entity, PermanentApiError, RawWebhook,
                             RetryableApiError, Unauthorized)
from tests.conftest import PAYLOADS, raw

CONN = Connection(name="agency-amo", type="amocrm", webhook_secret="s3cret")


@pytest.mark.parametrize("name, kind, entity, subset", [
    pytest.param("amocrm/lead_status_changed_full.form", "stage.changed", ("lead", "31926520"),
                 {"stage": {"id": "10216994"}, "previous_stage": {"id": "10216995"},
                  "pipeline": {"id": "2116"}, "responsible": {"id": "938348"}, "name": "Some test lead",
                  "fields": {"Some text field": "some text"}}, id="status_full_2016"),
    pytest.param("amocrm/lead_status_changed_compact.form", "stage.changed", ("lead", "32966269"),
                 {"stage": {"id": "76789234"}, "previous_stage": {"id": "76789230"},
                  "pipeline": {"id": "9621010"}, "previous_pipeline": {"id": "9621010"}}, id="status_compact"),
    pytest.param("amocrm/lead_added.form", "entity.created", ("lead", "32966269"),
                 {"name": "Test", "price": "999", "stage": {"id": "76789230"}}, id="lead_add"),
    pytest.param("amocrm/lead_updated_custom_fields.form", "entity.updated", ("lead", "32966269"),
                 {"fields": {"Поле1": "1", "Поле2": "2"}, "price": "9919"}, id="lead_update_cyrillic_fields"),
    pytest.param("amocrm/contact_updated.form", "entity.updated", ("contact", "37054081"),
                 {"name": "Абиба абибович", "fields": {"Должность": "555", "Телефон": "333", "Email": "444"},
                  "previous_responsible": {"id": "10000698"}}, id="contact_update"),
])
def test_recorded_webhooks_parse(name, kind, entity, subset):
    [event] = amocrm.parse(raw(name), CONN)
    assert (event.kind, event.entity.type, event.entity.id) == (kind, *entity)
    assert event.source == "amocrm" and event.connection == "agency-amo"
    for key, value in subset.items():
        assert event.data[key] == value


def test_event_ids_are_stable_and_distinct():
    first = amocrm.parse(raw("amocrm/lead_status_changed_full.form"), CONN)[0]
    again = amocrm.parse(raw("amocrm/lead_status_changed_full.form"), CONN)[0]
    other = amocrm.parse(raw("amocrm/lead_added.form"), CONN)[0]
    assert first.id == again.id != other.id


def test_compact_form_dedupes_over_the_retry_ladder_only():
    compact = amocrm.parse(raw("amocrm/lead_status_changed_compact.form"), CONN)[0]
    full = amocrm.parse(raw("amocrm/lead_status_changed_full.form"), CONN)[0]
    assert compact.dedupe_window == amocrm.COMPACT_DEDUPE_WINDOW
    assert full.dedupe_window is None
    assert full.occurred_at.startswith("2016-03-01")


def test_batched_items_become_one_event_each():
    body = ("leads[status][0][id]=1&leads[status][0][status_id]=10&leads[status][0][pipeline_id]=5"
            "&leads[status][1][id]=2&leads[status][1][status_id]=11&leads[status][1][pipeline_id]=5"
            "&leads[delete][0][id]=3&account[subdomain]=x").encode()
    events = amocrm.parse(RawWebhook({}, "application/x-www-form-urlencoded", body), CONN)
    assert [(e.kind, e.entity.id) for e in events] == [
        ("stage.changed", "1"), ("stage.changed", "2"), ("entity.deleted", "3")]


def test_note_and_task_webhooks():
    body = ("leads[note][0][note][text]=Hello&leads[note][0][note][note_type]=4"
            "&leads[note][0][note][element_id]=77&task[update][0][id]=9&task[update][0][element_id]=77"
            "&task[update][0][element_type]=2&task[update][0][status]=1&task[update][0][text]=Call").encode()
    note, task = amocrm.parse(RawWebhook({}, "application/x-www-form-urlencoded", body), CONN)
    assert (note.kind, note.entity, note.data["note"]["text"]) == ("note.added", Entity("lead", "77"), "Hello")
    assert (task.kind, task.data["parent"]) == ("task.completed", {"type": "lead", "id": "77"})


@pytest.mark.parametrize("body, reason", [
    (b"account[subdomain]=x", "no amoCRM entity found (expected keys like leads[status][0][id])"),
    (b"leads[status][0][name]=x", "leads[status][0] has no id"),
    (b"leads[status][0][id]=1", "leads[status][0] has no status_id"),
    (b"\xff\xfe", "body is not UTF-8 (byte 0)"),
    (b"leads[status]=1&leads[status][0][id]=2", "form key 'leads[status][0][id]' clashes with a plain value"),
    (b"a" + b"[x]" * 9 + b"=1", "form key 'a[x][x][x][x][x][x][x][x][x]' is nested deeper than 8"),
])
def test_bad_bodies_give_one_line_reasons(body, reason):
    with pytest.raises(BadPayload) as exc:
        amocrm.parse(RawWebhook({}, "application/x-www-form-urlencoded", body), CONN)
    assert str(exc.value) == reason


def test_verify_needs_the_url_token():
    amocrm.verify(raw("amocrm/lead_added.form", token="s3cret"), CONN)
    for query in ({}, {"token": "wrong"}):
        with pytest.raises(Unauthorized):
            amocrm.verify(RawWebhook({}, "", b"", query), CONN)


# --- the API client ----------------------------------------------------------------------------

@pytest.fixture
def amo_client(fake_amo, redis_db):
    conn = Connection(name="agency-amo", type="amocrm", base_url=fake_amo.url,
                      credentials={"token": "T"}, webhook_secret="s")
    fake_amo.add_lead(json.loads((PAYLOADS / "amocrm/api_lead_get.json").read_text()))
    return amocrm.Client(conn, store=redis_db, key_prefix="crmbridge-test:")


def test_get_entity_normalizes_with_names(amo_client, fake_amo):
    fake_amo.pipelines.append({"id": 1113, "name": "Realization", "statuses": [{"id": 2030, "name": "Content"}]})
    fake_amo.users.append({"id": 321123, "name": "Maria"})
    lead = amo_client.get_entity(Entity("lead", "17657"))
    assert lead["name"] == "Тестовая сделка"
    assert lead["stage"] == {"id": "2030", "name": "Content"}
    assert lead["pipeline"] == {"id": "1113", "name": "Realization"}
    assert lead["responsible"] == {"id": "321123", "name": "Maria"}
    assert lead["fields"] == {"Кастомное поле": "2020-05-08"}
    assert lead["tags"] == ["Тег для примера"]
    [call] = fake_amo.received("GET", "/api/v4/leads/17657")
    assert call.query == {"with": ["contacts"]} and call.headers["Authorization"] == "Bearer T"


def test_missing_lead_is_none(amo_client):
    assert amo_client.get_entity(Entity("lead", "1")) is None  # amoCRM answers 204


def test_move_to_stage_resolves_names_and_refreshes_the_cache_once(amo_client, fake_amo):
    amo_client.pipelines()  # cached without the new stage
    fake_amo.pipelines[0]["statuses"].append({"id": 555, "name": "Новий етап"})
    amo_client.move_to_stage(Entity("lead", "17657"), "Новий етап")
    [patch] = fake_amo.received("PATCH", "/api/v4/leads/17657")
    assert patch.body == {"status_id": 555, "pipeline_id": 2116}
    assert len(fake_amo.received("GET", "/api/v4/leads/pipelines")) == 2


def test_unknown_stage_is_permanent(amo_client):
    with pytest.raises(PermanentApiError, match="amoCRM has no stage 'Nowhere'"):
        amo_client.move_to_stage(Entity("lead", "17657"), "Nowhere")


def test_create_task_and_note(amo_client, fake_amo):
    due = datetime(2026, 11, 25, 10, tzinfo=timezone.utc).isoformat()
    task_id = amo_client.create_task(Entity("lead", "17657"), "Call", due, responsible="Olena Kovalenko")
    assert task_id >= 5000
    [call] = fake_amo.received("POST", "/api/v4/tasks")
    assert call.body == [{"text": "Call", "complete_till": 1795600800, "entity_id": 17657,
                          "entity_type": "leads", "responsible_user_id": 938348}]
    amo_client.add_note(Entity("lead", "17657"), "Привіт")
    [note] = fake_amo.received("POST", "/api/v4/leads/notes")
    assert note.body == [{"entity_id": 17657, "note_type": "common", "params": {"text": "Привіт"}}]


def test_set_fields_by_name(amo_client, fake_amo):
    amo_client.set_fields(Entity("lead", "17657"), {"Поле1": "x"})
    [call] = fake_amo.received("PATCH", "/api/v4/leads/17657")
    assert call.body == {"custom_fields_values": [{"field_id": 752009, "values": [{"value": "x"}]}]}


def test_errors_split_into_retryable_and_permanent(amo_client, fake_amo):
    problem = json.loads((PAYLOADS / "amocrm/api_error_400.json").read_text())
    fake_amo.fail("/api/v4/tasks", 400, problem)
    with pytest.raises(PermanentApiError) as exc:
        amo_client.create_task(Entity("lead", "1"), "x", "2026-11-25T10:00:00+00:00")
    assert "Request validation failed; custom_fields_values.0.field_id: The value you selected" in str(exc.value)
    fake_amo.fail("/api/v4/leads/notes", 429, b"Too Many Requests", headers={"Retry-After": "2"})
    with pytest.raises(RetryableApiError) as exc:
        amo_client.add_note(Entity("lead", "1"), "x")
    assert exc.value.retry_after == 2.0 and exc.value.status == 429


def test_record_only_logs_instead_of_calling(fake_amo, caplog):
    conn = Connection(name="newcomer", type="amocrm", base_url=fake_amo.url, webhook_secret="s")
    client = amocrm.Client(conn)
    caplog.set_level("INFO")
    assert client.create_task(Entity("lead", "1"), "Call", "2026-11-25T10:00:00+00:00", responsible="938348") is None
    assert fake_amo.calls == []
    assert 'would call POST ' in caplog.text and '"text": "Call"' in caplog.text
