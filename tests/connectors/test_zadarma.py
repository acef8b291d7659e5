"""Zadarma: signed callback requests against a fake API (the call_back step on the client's
request_callback), signed call-end notifications in, and the observer that pauses callbacks."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest

from connectors import zadarma
from connectors.base import (
    Connection,
    Entity,
    PermanentApiError,
    RawWebhook,
    RetryableApiError,
    Unauthorized,
)
from tests.conftest import payload
from pipeline.observers import observe
from tests.fakes_telephony import ZD_KEY, ZD_SECRET, FakeZadarma, zd_sign
from tests.steps import run_step, step_context

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def fake_zd():
    server = FakeZadarma().start()
    yield server
    server.stop()


def conn(url: str | None = None) -> Connection:
    return Connection(name="zadarma", type="zadarma", base_url=url, webhook_secret=ZD_SECRET,
                      credentials={"key": ZD_KEY, "secret": ZD_SECRET},
                      options={"extensions": {"938348": "100", "Ivan Petrenko": "101"}})


def notification(name: str, signature: str | None = None) -> RawWebhook:
    body = payload(f"zadarma/{name}")
    form = dict(parse_qsl(body.decode()))
    good = zd_sign(form["internal"] + form["destination"] + form["call_start"])
    return RawWebhook(headers={"Signature": signature or good}, content_type=FORM, body=body)


def test_the_signature_is_the_sdks_algorithm():
    # PHP: base64_encode(hash_hmac('sha1', '/v1/request/callback/' . $q . md5($q), $secret)) with
    # $q = http_build_query(ksort(params), RFC1738): sorted keys, spaces as '+'
    params = {"to": "+7 916 123-45-67", "from": "100", "format": "json"}
    assert zadarma.query_string(params) == "format=json&from=100&to=%2B7+916+123-45-67"
    import base64
    import hashlib
    import hmac
    q = "format=json&from=100&to=%2B7+916+123-45-67"
    data = "/v1/request/callback/" + q + hashlib.md5(q.encode()).hexdigest()
    expected = base64.b64encode(hmac.new(b"s3cr3t", data.encode(), hashlib.sha1).hexdigest().encode()).decode()
    assert zadarma.request_signature("/v1/request/callback/", params, "s3cr3t") == expected
    assert len(base64.b64decode(expected)) == 40  # the hex digest, not the 20 raw bytes


def test_call_back_calls_the_manager_extension_then_the_client(fake_zd, redis_db):
    client = zadarma.Client(conn(fake_zd.url), store=redis_db, key_prefix="t:")
    result = run_step("call_back", client, "938348", "+7 (916) 123-45-67", pause_until="2026-12-09T10:00:00+03:00",
                              entity=Entity("lead", "31926520"), now="2026-12-07T10:00:00+03:00")
    assert result["requested"] is True
    assert fake_zd.callbacks() == [("100", "79161234567")]
    [call] = fake_zd.received("GET", "/v1/request/callback/")
    assert call.query["format"] == ["json"] and call.headers["Authorization"].startswith(f"{ZD_KEY}:")


def test_api_errors_split_in_two(fake_zd, redis_db):
    client = zadarma.Client(conn(fake_zd.url), store=redis_db, key_prefix="t:")
    fake_zd.fail("/v1/request/callback/", 500, {"status": "error", "message": "Internal error"})
    with pytest.raises(RetryableApiError, match="HTTP 500"):
        run_step("call_back", client, "100", "79161234567")
    fake_zd.fail("/v1/request/callback/", 200, {"status": "error", "message": "Wrong parameters"})
    with pytest.raises(PermanentApiError, match="Wrong parameters"):
        run_step("call_back", client, "100", "79161234567")
    wrong = zadarma.Client(Connection(**{**conn(fake_zd.url).__dict__, "credentials": {"key": ZD_KEY, "secret": "x"}}),
                           store=redis_db, key_prefix="t:")
    with pytest.raises(PermanentApiError, match="401: Not authorized"):
        run_step("call_back", wrong, "100", "79161234567")
    with pytest.raises(PermanentApiError, match="not a phone number"):
        run_step("call_back", client, "100", "")


def test_a_signed_call_end_becomes_call_ended():
    zadarma.verify(notification("notify_out_end_answered.form"), conn())
    [event] = zadarma.parse(notification("notify_out_end_answered.form"), conn())
    assert (event.kind, str(event.entity)) == ("call.ended", "call:out_3f1c9d2e4b5a")
    assert event.data == {"event": "NOTIFY_OUT_END", "call_id": "out_3f1c9d2e4b5a", "manager": "100",
                          "client": "79161234567", "disposition": "answered", "talked": True, "duration": 184,
                          "call_start": "2026-12-07 10:05:11", "recorded": True}
    [busy] = zadarma.parse(notification("notify_out_end_busy.form"), conn())
    assert (busy.data["disposition"], busy.data["talked"]) == ("busy", False)


def test_a_wrong_or_missing_signature_is_refused():
    with pytest.raises(Unauthorized, match="Signature"):
        zadarma.verify(notification("notify_out_end_answered.form", signature="Zm9v"), conn())
    raw = notification("notify_out_end_answered.form")
    with pytest.raises(Unauthorized):
        zadarma.verify(RawWebhook(headers={}, content_type=FORM, body=raw.body), conn())


def test_a_talk_pauses_the_pair_until_the_planned_moment(fake_zd, redis_db):
    client = zadarma.Client(conn(fake_zd.url), store=redis_db, key_prefix="t:")
    run_step("call_back", client, "100", "79161234567", pause_until="2026-12-09T10:00:00+03:00",
                     entity=Entity("lead", "1"), now="2026-12-07T10:00:00+03:00")
    [ended] = zadarma.parse(notification("notify_out_end_answered.form"), conn())
    assert observe(step_context(client).rt, ended) == {"paused_until": "2026-12-09T10:00:00+03:00", "entity": "lead:1"}
    skipped = run_step("call_back", client, "100", "79161234567", now="2026-12-08T15:00:00+03:00")
    assert "paused until 2026-12-09T10:00:00+03:00" in skipped["skipped"]
    assert len(fake_zd.callbacks()) == 1
    run_step("call_back", client, "100", "79161234567", now="2026-12-09T10:30:00+03:00")
    assert len(fake_zd.callbacks()) == 2
    paused = json.loads(redis_db.get("t:calls:zadarma:paused:100:79161234567"))
    assert paused["talked_at"] == "2026-12-07 10:05:11"


def test_a_busy_end_pauses_nothing(fake_zd, redis_db):
    client = zadarma.Client(conn(fake_zd.url), store=redis_db, key_prefix="t:")
    run_step("call_back", client, "100", "79161234567", pause_until="2026-12-09T10:00:00+03:00")
    [busy] = zadarma.parse(notification("notify_out_end_busy.form"), conn())
    assert observe(step_context(client).rt, busy) is None
    run_step("call_back", client, "100", "79161234567", now=datetime(2026, 12, 7, 8, tzinfo=UTC).isoformat())
    assert len(fake_zd.callbacks()) == 2


def test_the_url_check_echoes_a_token_only():
    assert zadarma.echo({"zd_echo": "a1B2c3"}) == "a1B2c3"
    assert zadarma.echo({"zd_echo": "<script>"}) is None and zadarma.echo({}) is None


def test_a_multipart_notification_reads_the_same():
    # Zadarma may post notifications as multipart/form-data (API-REFERENCE: "form-encoded or multipart")
    form = dict(parse_qsl(payload("zadarma/notify_out_end_busy.form").decode()))
    boundary = "----zd7MA4YWxkTrZu0gW"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in form.items()) + f"--{boundary}--\r\n"
    content_type = f"multipart/form-data; boundary={boundary}"
    raw = RawWebhook(headers={"Content-Type": content_type,
                              "Signature": zd_sign(form["internal"] + form["destination"] + form["call_start"])},
                     content_type="multipart/form-data", body=body.encode())
    zadarma.verify(raw, conn())
    [event] = zadarma.parse(raw, conn())
    assert (event.data["disposition"], event.data["manager"], event.data["client"]) == ("busy", "100", "79161234567")
