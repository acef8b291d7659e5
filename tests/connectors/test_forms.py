"""Google Forms: what the Apps Script triggers post → one form.submitted event each."""
from __future__ import annotations

import json

import pytest

from connectors import forms
from connectors.base import BadPayload, BaseClient, Connection, Entity, RawWebhook, Unauthorized
from tests.conftest import PAYLOADS, raw

CONN = Connection(name="brief", type="forms", webhook_secret="forms-secret")


def feed(name: str, conn: Connection = CONN, **query: str):
    [event] = forms.parse(raw(f"forms/{name}", **query), conn)
    assert (event.kind, event.source, event.connection) == ("form.submitted", "forms", conn.name)
    assert "secret" not in event.raw
    return event


@pytest.mark.parametrize("name, entity, event_id, data", [
    pytest.param("form_response_uk.json", "1FAIpQLSe-brief-smm-uk", "brief:response:2_ABaOnud8Xk1vQmZ3f0aQm1", {
        "form": {"id": "1FAIpQLSe-brief-smm-uk", "title": "Бриф на SMM-просування"},
        "response_id": "2_ABaOnud8Xk1vQmZ3f0aQm1", "email": "owner@zerno.example",
        "submitted_at": "2025-11-24T12:31:07.512Z",
        "answers": {"Назва компанії": "Кав'ярня «Зерно»", "Ніша": "Кав'ярні",
                    "Які соцмережі ведемо?": ["Instagram", "Facebook"], "Бюджет на рекламу, грн": "15000",
                    "Номер задачі в Planfix": "1042"}}, id="form_bound_uk_checkboxes"),
    pytest.param("form_response_ru.json", "1FAIpQLSd-brief-ru", "brief:response:2_ABaOnucR7p", {
        "form": {"id": "1FAIpQLSd-brief-ru", "title": "Бриф для кондитерской"},
        "response_id": "2_ABaOnucR7p", "email": None, "submitted_at": "2025-11-24T09:02:44.000Z",
        "answers": {"Название": "Кондитерская «Лакомка»", "Когда удобно связаться?": ["Утро", "Вечер"],
                    "Оцените каналы": [["Instagram"], ["Telegram", "Viber"]]}}, id="form_bound_ru_grid_no_email"),
    pytest.param("sheet_named_values_uk.json", "1FAIpQLSe-brief-smm-uk", None, {
        "form": {"id": "1FAIpQLSe-brief-smm-uk", "title": "Бриф на SMM-просування"},
        "response_id": None, "email": "owner@zerno.example", "submitted_at": "24.11.2025 14:31:07",
        "answers": {"Назва компанії": "Кав'ярня «Зерно»", "Які соцмережі ведемо?": "Instagram, Facebook"}},
                 id="sheet_bound_uk"),
    pytest.param("sheet_named_values_docs.json", "brief", None, {
        "form": {"id": "brief", "title": None}, "response_id": None, "email": None,
        "submitted_at": "6/7/2015 20:54:13", "answers": {"First Name": "Jane", "Last Name": "Doe"}},
                 id="bare_named_values_from_google_docs"),
    pytest.param("flat_fields.json", "1FAIpQLSd-brief-ru", None, {
        "form": {"id": "1FAIpQLSd-brief-ru", "title": "Бриф для кондитерской"}, "response_id": None,
        "email": "anna@lakomka.example", "submitted_at": None,
        "answers": {"Название": "Кондитерская «Лакомка»", "Когда удобно связаться?": ["Утро"]}},
                 id="flat_public_script_ru"),
])
def test_submissions_parse(name, entity, event_id, data):
    event = feed(name)
    assert event.entity == Entity("form", entity)
    assert event.data == data
    if event_id:
        assert event.id == event_id
    else:  # no response id: the content is the key
        assert event.id.startswith("brief:") and event.id == feed(name).id


def test_the_script_timestamp_is_the_event_time():
    assert feed("form_response_uk.json").occurred_at == "2025-11-24T12:31:07.512000+00:00"


def test_a_sheet_row_with_other_answers_is_another_event():
    body = json.loads((PAYLOADS / "forms/sheet_named_values_uk.json").read_text())
    body["namedValues"]["Назва компанії"] = ["Інша кав'ярня"]
    [other] = forms.parse(RawWebhook({}, "application/json", json.dumps(body).encode()), CONN)
    assert other.id != feed("sheet_named_values_uk.json").id


def test_the_form_id_falls_back_to_the_url_then_the_connection_options():
    assert feed("sheet_named_values_docs.json", form="1FAIpQLSe-url").entity == Entity("form", "1FAIpQLSe-url")
    configured = Connection(name="brief", type="forms", webhook_secret="s", options={"form_id": "1FAIpQLSe-opt"})
    assert feed("sheet_named_values_docs.json", configured).entity == Entity("form", "1FAIpQLSe-opt")


@pytest.mark.parametrize("body, reason", [
    (b"[]", "expected a JSON object, found list"),
    (b"{}", "no answers found (expected 'answers', 'namedValues' or the bare namedValues)"),
    ('{"secret": "forms-secret", "Назва": ["x"]}'.encode(),
     "no answers found (expected 'answers', 'namedValues' or the bare namedValues)"),
    (b'{"answers": ["a", "b"]}', "no answers found (expected 'answers', 'namedValues' or the bare namedValues)"),
    (b'{"answers": {"a": 1}', "body is not JSON: Expecting ',' delimiter: line 1 column 21 (char 20)"),
    (b"\xc3\x28", "body is not UTF-8 (byte 0)"),
])
def test_bad_bodies_give_one_line_reasons(body, reason):
    with pytest.raises(BadPayload) as exc:
        forms.parse(RawWebhook({}, "application/json", body), CONN)
    assert str(exc.value) == reason


@pytest.mark.parametrize("headers, query, name", [
    pytest.param({}, {}, "form_response_uk.json", id="body-secret"),
    pytest.param({"X-Crmbridge-Token": "forms-secret"}, {}, "form_response_ru.json", id="header"),
    pytest.param({}, {"token": "forms-secret"}, "sheet_named_values_docs.json", id="url-token"),
])
def test_verify_accepts(headers, query, name):
    forms.verify(RawWebhook(headers, "application/json", (PAYLOADS / "forms" / name).read_bytes(), query), CONN)


@pytest.mark.parametrize("conn, headers, body", [
    pytest.param(CONN, {}, b'{"secret": "wrong", "answers": {}}', id="wrong"),
    pytest.param(CONN, {}, (PAYLOADS / "forms/form_response_ru.json").read_bytes(), id="missing"),
    pytest.param(Connection(name="x", type="forms"), {}, b'{"secret": ""}', id="no-secret-configured"),
])
def test_verify_refuses(conn, headers, body):
    with pytest.raises(Unauthorized, match=r"^missing or wrong secret \(body 'secret', URL 'token' or "
                                           r"X-Crmbridge-Token header\)$"):
        forms.verify(RawWebhook(headers, "application/json", body), conn)


def test_the_client_has_no_actions():
    own = {name for name in vars(forms.Client) if not name.startswith("__")}
    assert issubclass(forms.Client, BaseClient) and own == set()


# --- through the receiver ------------------------------------------------------------------------

@pytest.fixture
def env(env):
    return {**env, "FORMS_WEBHOOK_SECRET": "forms-secret"}


@pytest.fixture
def config_dir(config_dir):
    with (config_dir / "connections.yaml").open("a", encoding="utf-8") as f:
        f.write("\n  brief:\n    type: forms\n    webhook_secret: ${FORMS_WEBHOOK_SECRET}\n")
    return config_dir


def test_the_receiver_queues_a_submission_once(client, runtime):
    body = (PAYLOADS / "forms/form_response_uk.json").read_bytes()
    first = client.post("/hooks/brief", data=body, content_type="application/json")
    again = client.post("/hooks/brief", data=body, content_type="application/json")
    assert (first.status_code, first.json) == (200, {"accepted": 1, "duplicates": 0})
    assert (again.status_code, again.json) == (200, {"accepted": 0, "duplicates": 1})
    refused = client.post("/hooks/brief", data=body.replace(b"forms-secret", b"guess"),
                          content_type="application/json")
    assert refused.status_code == 401
    assert runtime.backend.queue.count == 1
