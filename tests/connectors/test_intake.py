"""Lead intake doors: a website form (any builder), Tilda's form webhook and Jivo's chat webhooks,
each read into the one lead shape (name, E.164 phone, case-folded e-mail, source, UTM)."""
from __future__ import annotations

import json

import pytest

from connectors.base import BadPayload, Connection, Entity, RawWebhook, Unauthorized
from connectors.intake import jivo, leads, tilda, webform
from tests.conftest import payload, raw

TILDA = Connection(name="site-tilda", type="tilda", webhook_secret="tilda-secret")
JIVO = Connection(name="site-chat", type="jivo", webhook_secret="jivo-secret")
CF7 = Connection(name="site-form", type="webform", webhook_secret="form-secret",
                 options={"form_id": "contacts", "fields": {"phone": "tel-412"}, "submission_id": "_wpcf7_id"})
FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize("typed, region, e164", [
    ("+380 67 123-45-67", "UA", "+380671234567"),
    ("067 123 45 67", "UA", "+380671234567"),
    ("0671234567", "UA", "+380671234567"),
    ("380671234567", "UA", "+380671234567"),
    ("8 067 123 45 67", "UA", "+380671234567"),      # the old Ukrainian trunk 8
    ("(067)123-45-67", "UA", "+380671234567"),
    ("8 (916) 123-45-67", "UA", "+79161234567"),     # Russian national, typed on a Ukrainian site
    ("8 (916) 123-45-67", "RU", "+79161234567"),
    ("79161234567", "RU", "+79161234567"),
    ("+7 916 123 45 67", "UA", "+79161234567"),
    ("+1 408 498 7855", "UA", "+14084987855"),
    ("12345", "UA", None), ("", "UA", None), ("позвоните", "UA", None), ("+" + "9" * 70, "UA", None),
])
def test_phones_are_normalised_to_e164(typed, region, e164):
    assert leads.normalise_phone(typed, region) == e164


@pytest.mark.parametrize("typed, found", [
    ("Olena.Koval@Example.COM", "olena.koval@example.com"), ("  anna@example.ua ", "anna@example.ua"),
    ("Анна <Anna@Example.ua>", "anna@example.ua"), ("not an address", None), ("a@b", None), (None, None),
])
def test_emails_are_case_folded(typed, found):
    assert leads.normalise_email(typed) == found


# --- Tilda ------------------------------------------------------------------------------------------------

def test_tilda_submission_is_a_lead_keyed_by_its_tranid():
    [event] = tilda.parse(raw("tilda/submission_uk.form"), TILDA)
    assert (event.id, event.kind, event.source, event.entity) == (
        "site-tilda:tranid:1111111:6161583731", "form.submitted", "tilda", Entity("form", "form123456789"))
    assert {k: event.data[k] for k in ("name", "phone", "phone_raw", "email", "text", "source", "utm")} == {
        "name": "Олена Коваль", "phone": "+380671234567", "phone_raw": "+380 (67) 123-45-67",
        "email": "olena.koval@example.com", "text": "Цікавить весільний торт на 40 гостей",
        "source": {"door": "tilda", "connection": "site-tilda", "form": "form123456789", "page": None},
        "utm": {"source": "instagram", "medium": "cpc", "campaign": "wedding_2026"}}
    assert event.data["submission_id"] == "1111111:6161583731"
    assert "tranid" not in event.data["fields"] and event.data["fields"]["Comment"].startswith("Цікавить")


def test_tilda_russian_phone_with_trunk_8_and_no_utm():
    [event] = tilda.parse(raw("tilda/submission_ru_no_utm.form"), TILDA)
    assert (event.data["phone"], event.data["utm"], event.data["text"]) == ("+79161234567", {}, None)


def test_tilda_test_request_is_acknowledged_with_nothing_queued():
    assert tilda.parse(raw("tilda/test_request.form"), TILDA) == []


def test_tilda_delivers_three_times_and_it_is_one_event():
    ids = {tilda.parse(raw("tilda/submission_uk.form"), TILDA)[0].id for _ in range(3)}
    assert len(ids) == 1


def test_tilda_json_body_and_renamed_fields():
    body = json.dumps({"imya": "Олена", "telefon": "067 123 45 67", "tranid": "5:6", "formid": "form1"}).encode()
    conn = Connection(name="t", type="tilda", webhook_secret="s", options={"fields": {"name": "imya", "phone": "telefon"}})
    [event] = tilda.parse(RawWebhook({}, "application/json", body), conn)
    assert (event.data["name"], event.data["phone"]) == ("Олена", "+380671234567")


@pytest.mark.parametrize("body, reason", [
    (b"Name=x&formid=form1", "tranid"),
    (b"Name=x&tranid=1:2", "formid"),
    (b"Name=x&tranid=../x&formid=form1", "tranid"),
    (b"tranid=1:2&formid=form/../1", "formid"),
    (b"tranid=1:2&tranid=1:3&formid=form1", "tranid"),
    (b"Name=%ff&tranid=1:2&formid=form1", "UTF-8"),
    (b"test=test&tranid=1:2", "formid"),
])
def test_tilda_bodies_it_never_sends_are_refused(body, reason):
    with pytest.raises(BadPayload, match=reason):
        tilda.parse(RawWebhook({}, FORM, body), TILDA)


@pytest.mark.parametrize("module, conn", [(tilda, TILDA), (jivo, JIVO), (webform, CF7)])
def test_the_secret_is_checked_in_constant_time_from_the_url_or_header(module, conn):
    good = conn.webhook_secret
    module.verify(RawWebhook({}, FORM, b"", {"token": good}), conn)
    module.verify(RawWebhook({"X-Crmbridge-Token": good}, FORM, b""), conn)
    for query, headers in (({}, {}), ({"token": good + "x"}, {}), ({"token": ""}, {}), ({}, {"X-Crmbridge-Token": "no"})):
        with pytest.raises(Unauthorized):
            module.verify(RawWebhook(headers, FORM, b"", query), conn)
    with pytest.raises(Unauthorized):
        module.verify(RawWebhook({}, FORM, b"", {"token": good}), Connection(name="x", type=conn.type))


# --- Jivo -------------------------------------------------------------------------------------------------

def test_jivo_offline_message_is_a_lead():
    [event] = jivo.parse(raw("jivo/offline_message_uk.json"), JIVO)
    assert (event.id, event.kind, event.source, event.entity) == (
        "site-chat:offline:1765100000001", "message.received", "jivo", Entity("chat", "4410"))
    d = event.data
    assert (d["name"], d["phone"], d["email"], d["event_name"]) == (
        "Олена Коваль", "+380671234567", "olena.koval@example.com", "offline_message")
    assert d["text"] == "Добрий день! Потрібен торт на весілля, 40 гостей, 14 лютого."
    assert d["source"] == {"door": "jivo", "connection": "site-chat", "form": "3948",
                           "page": "https://cake.example.ua/wedding"}
    assert d["utm"] == {"source": "google", "medium": "cpc", "campaign": "wedding", "content": "banner",
                        "term": "торт на весілля"}


def test_jivo_official_chat_finished_carries_the_visitor_and_the_messages():
    [event] = jivo.parse(raw("jivo/chat_finished.json"), JIVO)
    assert (event.id, event.entity) == ("site-chat:chat:7607", Entity("chat", "7607"))
    assert (event.data["name"], event.data["phone"], event.data["email"]) == (
        "John Smith", "+14084987855", "email@example.com")
    assert [m["type"] for m in event.data["messages"]] == ["visitor", "agent"]
    assert event.data["messages"][0]["at"] == "2022-10-10T10:07:56+00:00"
    assert event.occurred_at == "2022-10-10T10:08:03+00:00"      # the last message
    assert event.data["text"] == "<Message text is not displayed here>"   # the visitor's lines


def test_jivo_official_offline_message_and_events_that_are_no_lead():
    [event] = jivo.parse(raw("jivo/offline_message.json"), JIVO)
    assert event.id == "site-chat:offline:1665399500726" and event.data["text"] == "Message text"
    assert jivo.parse(raw("jivo/chat_accepted.json"), JIVO) == []


def test_jivo_blacklisted_chat_is_no_lead():
    body = json.loads(payload("jivo/chat_finished.json"))
    body["chat"]["blacklisted"] = True
    assert jivo.parse(RawWebhook({}, "application/json", json.dumps(body).encode()), JIVO) == []


def _jivo(**changes):
    body = json.loads(payload("jivo/offline_message.json"))
    body.update(changes)
    return RawWebhook({}, "application/json", json.dumps(body).encode())


@pytest.mark.parametrize("changes, reason", [
    ({"event_name": "something_else"}, "event_name"),
    ({"chat_id": "1/../../x"}, "chat_id"), ({"chat_id": -1}, "chat_id"), ({"chat_id": True}, "chat_id"),
    ({"offline_message_id": 1.5}, "offline_message_id"),
    ({"widget_id": "../x"}, "widget_id"), ({"visitor": "John"}, "visitor"),
    ({"visitor": {"phone": 380671234567}}, "visitor.phone"), ({"message": None}, "message"),
])
def test_jivo_bodies_it_never_sends_are_refused(changes, reason):
    with pytest.raises(BadPayload, match=reason):
        jivo.parse(_jivo(**changes), JIVO)


# --- any website form -------------------------------------------------------------------------------------

def test_a_contact_form_with_a_field_map():
    [event] = webform.parse(raw("webform/contact_form7.form"), CF7)
    assert (event.kind, event.entity, event.data["submission_id"]) == ("form.submitted", Entity("form", "contacts"), None)
    assert (event.data["name"], event.data["phone"], event.data["email"], event.data["text"]) == (
        "Олена Коваль", "+380671234567", "olena.koval@example.com", "Передзвоніть, будь ласка")
    assert event.data["utm"] == {"source": "facebook", "campaign": "spring"}
    # no builder id: the body's content is the key; the same POST again is the same event, another is not
    assert event.id == webform.parse(raw("webform/contact_form7.form"), CF7)[0].id
    other = payload("webform/contact_form7.form").replace(b"512", b"513")
    assert webform.parse(RawWebhook({}, FORM, other), CF7)[0].id != event.id


def test_a_json_builder_with_nested_answers_and_its_own_submission_id():
    conn = Connection(name="callback", type="webform", webhook_secret="s", options={
        "fields": {"name": "data.Name", "phone": "data.Phone", "email": "data.Email"},
        "submission_id": "submission_id"})
    [event] = webform.parse(raw("webform/json_nested.json"), conn)
    assert event.id == "callback:submission:sub_8f2a61"
    assert (event.data["name"], event.data["phone"], event.data["email"]) == ("Иван Петров", "+79161234567", "ivan@example.ru")
    assert event.data["fields"]["services"] == ["Торт", "Капкейки"]


def test_a_secret_in_the_body_is_never_kept_and_repeated_fields_are_lists():
    body = b"name=A&phone=0671234567&token=form-secret&opt[]=a&opt[]=b"
    [event] = webform.parse(RawWebhook({}, FORM, body), Connection(name="f", type="webform", webhook_secret="form-secret"))
    assert "token" not in event.data["fields"] and event.data["fields"]["opt"] == ["a", "b"]
    assert "form-secret" not in json.dumps(event.to_dict())


@pytest.mark.parametrize("body, ctype, reason", [
    (b"", FORM, "no form fields"), (b"[]", "application/json", "JSON object"),
    (b'{"a": [{"b": 1}]}', "application/json", "list of something"),
    (b"a=%00", FORM, "not text"), (b"name=x&_wpcf7_id=a/b", FORM, "submission id"),
])
def test_form_bodies_that_are_no_form_are_refused(body, ctype, reason):
    with pytest.raises(BadPayload, match=reason):
        webform.parse(RawWebhook({}, ctype, body), CF7)


MULTIPART = "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW"


def test_a_multipart_form_with_a_file():
    body = payload("webform/multipart_with_file.multipart")
    [event] = webform.parse(RawWebhook({"Content-Type": MULTIPART}, "multipart/form-data", body), CF7)
    assert (event.data["name"], event.data["phone"]) == ("Олена Коваль", "+380671234567")
    [att] = event.data["attachments"]
    assert (att["field"], att["name"], att["content_type"], att["size"], att["too_large"]) == (
        "your-file", "brief.pdf", "application/pdf", 15, False)
    assert event.id == webform.parse(RawWebhook({"Content-Type": MULTIPART}, "multipart/form-data", body), CF7)[0].id
    with pytest.raises(BadPayload, match="multipart"):       # the boundary missing from the header
        webform.parse(RawWebhook({"Content-Type": "multipart/form-data"}, "multipart/form-data", body), CF7)


def test_form_options_are_checked_at_start_up_with_their_line(tmp_path):
    from config.connections import load_connections
    from config.loader import ConfigErrors
    path = tmp_path / "connections.yaml"
    path.write_text("""connections:
  site-form:
    type: webform
    webhook_secret: ${S}
    options:
      fields: [your-name]
      submission_id: "a b"
  site-tilda:
    type: tilda
    webhook_secret: ${S}
    options:
      fields: {name: Name, telephone: Phone}
      region: Ukraine
""", encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_connections(path, {"S": "s"}, shown_as="connections.yaml")
    assert [str(e) for e in caught.value.errors] == [
        'connections.yaml:6: connection "site-form" → options → fields: expected a mapping such as '
        "{name: your-name, phone: tel}, found ['your-name']",
        'connections.yaml:7: connection "site-form" → options → submission_id: expected 1-128 of A-Z a-z 0-9 _ . : @ -, '
        "found 'a b'",
        'connections.yaml:12: connection "site-tilda" → options → fields: unknown key \'telephone\'; expected one of: '
        "name, phone, email, text, page",
        'connections.yaml:13: connection "site-tilda" → options → region: expected a country code such as UA or RU, '
        "found 'Ukraine'"]
    assert webform.option_problems(CF7.options) == [] and jivo.option_problems({"region": "RU"}) == []
