"""Hostile input at the door, per vendor: what an attacker or a broken platform sends is answered
with a 4xx and a one-line reason, and nothing is queued, marked or left in Redis.

The table runs in-process (Flask's test client, one test per case) and, whole, against the app
under gunicorn as README's Production section runs it. tests/reliability/test_bad_input.py keeps
the older cases (amoCRM and Telegram auth, sizes, chunked bodies, malformed JSON); this table adds
the other receivers, id grammars and path traversal, duplicate keys, Telegram's bounds, the Forms
shapes, encodings, header and query abuse. Then: Telegram's own sample updates are accepted,
clients never let a `..` path leave, and a Hypothesis property: any text through any connector's
parse gives Events with valid ids or a WebhookError, never another exception.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from redis import Redis

from config.settings import Settings
from connectors import CONNECTORS
from connectors.base import (
    BadPayload, Connection, Entity, Event, PermanentApiError, RawWebhook, WebhookError, has_dot_segments,
    parse_json, positive_id, segment,
)
from connectors.zadarma import sign
from tests.conftest import PAYLOADS, QUICKSTART, ROOT, TEST_REDIS_URL

PREFIX, QUEUE = "crmhostile:", "crmhostile"
FORM, JSON = "application/x-www-form-urlencoded", "application/json"
AMO = "/hooks/quickstart-amo?token=amo-secret"
TG, TGH = "/hooks/quickstart-bot", {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"}
PF, PFH = "/hooks/hostile-planfix", {"X-Crmbridge-Token": "pf-secret"}
B24 = "/hooks/hostile-b24"
FORMS, FORMSH = "/hooks/hostile-forms", {"X-Crmbridge-Token": "forms-secret"}
INBOX = "/hooks/hostile-inbox?token=inbox-secret"
ZD = "/hooks/hostile-zadarma"
ZD_SECRET = "zd-secret"
MIB = 1024 * 1024

CONNECTIONS = {
    "hostile-planfix": {"type": "planfix", "base_url": "http://127.0.0.1:9/rest", "webhook_secret": "${PF_SECRET}"},
    "hostile-b24": {"type": "bitrix24", "base_url": "http://127.0.0.1:9/rest/1", "webhook_secret": "${B24_SECRET}"},
    "hostile-forms": {"type": "forms", "webhook_secret": "${FORMS_SECRET}"},
    "hostile-inbox": {"type": "inbox", "webhook_secret": "${INBOX_SECRET}"},
    "hostile-zadarma": {"type": "zadarma", "webhook_secret": "${ZD_SECRET}"},
    "hostile-out": {"type": "webhook", "base_url": "http://127.0.0.1:9/hook"},
}
ENV = {"AMO_BASE_URL": "http://127.0.0.1:9", "AMO_TOKEN": "amo-token", "AMO_WEBHOOK_SECRET": "amo-secret",
       "TELEGRAM_API_URL": "http://127.0.0.1:9", "TELEGRAM_BOT_TOKEN": "123456:TEST-token",
       "TELEGRAM_WEBHOOK_SECRET": "tg-secret", "TEAM_CHAT_ID": "-1001234567890",
       "PF_SECRET": "pf-secret", "B24_SECRET": "b24-token", "FORMS_SECRET": "forms-secret",
       "INBOX_SECRET": "inbox-secret", "ZD_SECRET": ZD_SECRET}


# --- bodies ------------------------------------------------------------------------------------

def amo(lead_id: str) -> bytes:
    return (f"leads[status][0][id]={quote(lead_id, safe='')}&leads[status][0][status_id]=142"
            f"&leads[status][0][pipeline_id]=2116&account[subdomain]=x").encode()


def amo_note(element_id: str) -> bytes:
    return (f"leads[note][0][note][element_id]={quote(element_id, safe='')}&leads[note][0][note][element_type]=2"
            "&leads[note][0][note][text]=hi&leads[note][0][note][note_type]=4").encode()


def b24(record_id: str, event: str = "ONCRMDEALUPDATE", token: str = "b24-token") -> bytes:
    field = "FIELDS_AFTER" if event.startswith("ONTASK") else "FIELDS"
    return (f"event={event}&data[{field}][ID]={quote(record_id, safe='')}&ts=1700000000"
            f"&auth[domain]=portal.bitrix24.ru&auth[application_token]={token}").encode()


def js(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def pf(task: Any, **more: Any) -> bytes:
    return js({"event": "task.updated", "task": task, **more})


MSG = {"message_id": 7, "date": 1_700_000_000, "chat": {"id": 5, "type": "private"},
       "from": {"id": 5, "is_bot": False, "first_name": "A"}, "text": "hi"}


def tg_message(**changes: Any) -> bytes:
    return js({"update_id": 1, "message": {**MSG, **changes}})


def tg_button(data: Any, **changes: Any) -> bytes:
    return js({"update_id": 2, "callback_query": {"id": "42", "from": MSG["from"], "chat_instance": "-1",
                                                  "message": MSG, "data": data, **changes}})


def forms_api(**changes: Any) -> dict[str, Any]:
    body = json.loads((PAYLOADS / "forms" / "api_form_response.json").read_text())
    body.update(changes)
    return body


def umnico(lead: Any) -> bytes:
    body = json.loads((PAYLOADS / "inbox" / "umnico_message_incoming_uk.json").read_text())
    body["leadId"] = lead
    return js(body)


def generic(**changes: Any) -> bytes:
    body = json.loads((PAYLOADS / "inbox" / "generic_message_ru.json").read_text())
    body.update(changes)
    return js(body)


def zadarma(call_id: str = "out_3f1c9d2e4b5a", duration: str = "184", internal: str = "100",
            destination: str = "79161234567", start: str = "2026-12-07 10:05:11") -> tuple[bytes, dict[str, str]]:
    form = {"event": "NOTIFY_OUT_END", "call_start": start, "pbx_call_id": call_id, "caller_id": "74951234567",
            "destination": destination, "internal": internal, "duration": duration, "disposition": "answered"}
    body = "&".join(f"{k}={quote(v, safe='')}" for k, v in form.items()).encode()
    return body, {"Signature": sign(internal + destination + start, ZD_SECRET)}


# --- the table -----------------------------------------------------------------------------------

@dataclass
class Case:
    method: str
    path: str
    body: bytes | None
    ctype: str | None
    headers: dict[str, str]
    status: int
    error: str | None     # a part of the one-line reason


def case(id: str, method: str, path: str, body: bytes | None, ctype: str | None, headers: dict[str, str],
         status: int, error: str | None):
    return pytest.param(Case(method, path, body, ctype, headers, status, error), id=id)


ZD_BAD_CALL, ZD_BAD_CALL_H = zadarma(call_id="../../info")
ZD_BAD_DUR, ZD_BAD_DUR_H = zadarma(duration="3 minutes")
ZD_GOOD, _ = zadarma()
GOOD_PF = pf({"id": 1042, "name": "x"})

CASES = [
    # who is calling: every receiver's secret
    case("pf-no-secret", "POST", PF, GOOD_PF, JSON, {}, 401, "missing or wrong secret"),
    case("pf-wrong-header-right-url", "POST", PF + "?token=pf-secret", GOOD_PF, JSON,
         {"X-Crmbridge-Token": "nope"}, 401, "missing or wrong secret"),
    case("pf-secret-as-number", "POST", PF, pf({"id": 1}, secret=12345), JSON, {}, 401, "missing or wrong secret"),
    case("pf-secret-8k-header", "POST", PF, GOOD_PF, JSON, {"X-Crmbridge-Token": "p" * 8000}, 401, "secret"),
    case("b24-wrong-application-token", "POST", B24, b24("759", token="other"), FORM, {}, 401, "application_token"),
    case("b24-token-twice", "POST", B24, b24("759") + b"&auth[application_token]=other", FORM, {}, 401,
         "application_token"),
    case("forms-no-secret", "POST", FORMS, js(forms_api()), JSON, {}, 401, "missing or wrong secret"),
    case("inbox-no-token", "POST", "/hooks/hostile-inbox", generic(), JSON, {}, 401, "missing or wrong token"),
    case("inbox-token-in-body-only", "POST", "/hooks/hostile-inbox", generic(token="inbox-secret"), JSON, {}, 401,
         "missing or wrong token"),
    case("zadarma-no-signature", "POST", ZD, ZD_GOOD, FORM, {}, 401, "Signature"),
    case("zadarma-signature-of-other-fields", "POST", ZD, ZD_GOOD, FORM,
         {"Signature": sign("100" + "70000000000" + "2026-12-07 10:05:11", ZD_SECRET)}, 401, "Signature"),
    case("outbound-webhook-connection", "POST", "/hooks/hostile-out", b"{}", JSON, {}, 401, "outbound webhook"),
    # how: methods, paths, content types
    case("delete-method", "DELETE", AMO, None, None, {}, 405, "not allowed"),
    case("path-dot-dot-encoded", "POST", "/hooks/..%2fquickstart-amo?token=amo-secret", amo("1"), FORM, {}, 404, None),
    case("path-dot-dot-name", "POST", "/hooks/%2e%2e?token=amo-secret", amo("1"), FORM, {}, 404, "unknown connection"),
    case("pf-text-plain", "POST", PF, GOOD_PF, "text/plain", PFH, 415, "content type"),
    case("b24-json", "POST", B24, js({"event": "ONCRMDEALUPDATE"}), JSON, {}, 401, "application_token"),
    case("forms-form-encoded", "POST", FORMS, b"a=b", FORM, FORMSH, 415, "content type"),
    case("inbox-form-encoded", "POST", INBOX, b"event=message", FORM, {}, 415, "content type"),
    case("zadarma-json", "POST", ZD, js({"event": "NOTIFY_OUT_END"}), JSON, {}, 415, "content type"),
    case("tg-two-content-types", "POST", TG, tg_message(), f"{FORM}, {JSON}", TGH, 415, "content type"),
    # how much
    case("pf-over-size", "POST", PF, b'{"a": "' + b"x" * MIB + b'"}', JSON, PFH, 413, "body over"),
    case("forms-over-size", "POST", FORMS, b" " * (MIB + 1), JSON, FORMSH, 413, "body over"),
    # encodings
    case("tg-utf16-body", "POST", TG, tg_message().decode().encode("utf-16"), JSON, TGH, 400, "UTF-8"),
    case("tg-utf8-bom", "POST", TG, b"\xef\xbb\xbf" + tg_message(), JSON, TGH, 400, "not JSON"),
    case("tg-overlong-utf8-slash", "POST", TG, tg_message().replace(b'"hi"', b'"h\xc0\xafi"'), JSON, TGH, 400,
         "UTF-8"),
    case("tg-lone-surrogate", "POST", TG, tg_message(text="a").replace(b'"a"', b'"a\\ud800b"'), JSON, TGH, 400,
         "surrogate"),
    case("pf-latin1-body", "POST", PF, pf({"id": 1, "name": "caf\xe9"}).decode().encode("latin-1"), JSON, PFH, 400,
         "UTF-8"),
    # Bitrix24's secret is in the body: a body that cannot be read cannot authenticate
    case("b24-bad-percent-utf8", "POST", B24, b24("759") + b"&data[FIELDS][X]=%ff%fe", FORM, {}, 401,
         "application_token"),
    # nesting
    case("pf-deep-json", "POST", PF, b'{"event": "task.updated", "task": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
         JSON, PFH, 400, "nested deeper"),
    case("b24-deep-form-key", "POST", B24, b24("759") + b"&data" + b"[a]" * 20 + b"=1", FORM, {}, 401,
         "application_token"),
    case("amo-deep-form-key-in-item", "POST", AMO, amo("1") + b"&leads[status][0]" + b"[a]" * 10 + b"=1", FORM, {},
         400, "nested deeper"),
    case("inbox-deep-json", "POST", INBOX, b"[" * 33 + b"]" * 33, JSON, {}, 400, "nested deeper"),
    # duplicate keys
    case("tg-duplicate-update-id", "POST", TG, b'{"update_id": 1, "update_id": 2, "message": {}}', JSON, TGH, 400,
         "twice"),
    case("tg-duplicate-chat-id", "POST", TG, tg_message().replace(b'"id": 5, "type"', b'"id": 5, "id": -100, "type"'),
         JSON, TGH, 400, "twice"),
    case("pf-duplicate-task", "POST", PF, b'{"event": "task.updated", "task": {"id": 1}, "task": {"id": 2}}', JSON,
         PFH, 400, "twice"),
    case("pf-duplicate-secret", "POST", PF, b'{"secret": "nope", "secret": "pf-secret", "event": "task.updated", '
         b'"task": {"id": 1}}', JSON, {}, 400, "twice"),
    case("forms-duplicate-answer", "POST", FORMS, b'{"answers": {"Q": "a", "Q": "b"}}', JSON, FORMSH, 400, "twice"),
    case("inbox-duplicate-lead", "POST", INBOX, umnico(64950001).replace(b'"leadId": 64950001',
                                                                          b'"leadId": 1, "leadId": 64950001'),
         JSON, {}, 400, "twice"),
    # id grammar and path traversal, per vendor
    case("amo-id-traversal", "POST", AMO, amo("1/../../account"), FORM, {}, 400, "positive integer id"),
    case("amo-id-other-host-path", "POST", AMO, amo("1/../../../../other?x=1"), FORM, {}, 400, "positive integer id"),
    case("amo-id-negative", "POST", AMO, amo("-5"), FORM, {}, 400, "positive integer id"),
    case("amo-id-zero", "POST", AMO, amo("0"), FORM, {}, 400, "positive integer id"),
    case("amo-id-exponent", "POST", AMO, amo("1e3"), FORM, {}, 400, "positive integer id"),
    case("amo-id-fullwidth-digits", "POST", AMO, amo("１２３"), FORM, {}, 400, "positive integer id"),
    case("amo-id-20-digits", "POST", AMO, amo("9" * 20), FORM, {}, 400, "positive integer id"),
    case("amo-id-newline", "POST", AMO, amo("12\n"), FORM, {}, 400, "positive integer id"),
    case("amo-note-element-traversal", "POST", AMO, amo_note("5/../../account"), FORM, {}, 400, "element_id"),
    case("b24-id-traversal", "POST", B24, b24("../../profile"), FORM, {}, 400, "positive integer id"),
    case("b24-id-word", "POST", B24, b24("abc"), FORM, {}, 400, "positive integer id"),
    case("b24-task-id-query", "POST", B24, b24("7?x=1", event="ONTASKUPDATE"), FORM, {}, 400, "positive integer id"),
    case("pf-task-id-traversal", "POST", PF, pf({"id": "1042/../../user"}), JSON, PFH, 400, "positive integer id"),
    case("pf-task-id-negative", "POST", PF, pf({"id": -1}), JSON, PFH, 400, "positive integer id"),
    case("pf-task-id-float", "POST", PF, pf({"id": 1.5}), JSON, PFH, 400, "positive integer id"),
    case("pf-task-id-object", "POST", PF, pf({"id": {"id": 1}}), JSON, PFH, 400, "task.id is missing"),
    case("pf-contact-generic-other-kind", "POST", PF, js({"event": "contact.updated", "contact": {"id": "user:5"}}),
         JSON, PFH, 400, "positive integer id"),
    case("pf-responsible-traversal", "POST", PF, pf({"id": 1, "responsible": {"id": "user:5/../../x"}}), JSON, PFH,
         400, "reference id"),
    case("pf-file-id-traversal", "POST", PF, js({"event": "task.file_added", "task": {"id": 1},
                                                 "files": [{"id": "../../file/9"}]}), JSON, PFH, 400, "file id"),
    case("pf-comment-id-word", "POST", PF, js({"event": "task.comment_added", "task": {"id": 1},
                                               "comment": {"id": "x/y", "text": "hi"}}), JSON, PFH, 400, "comment.id"),
    case("tg-chat-id-zero", "POST", TG, tg_message(chat={"id": 0, "type": "private"}), JSON, TGH, 400,
         "message.chat.id is not a non-zero signed 64-bit integer"),
    case("tg-chat-id-over-64-bits", "POST", TG, tg_message(chat={"id": 2 ** 63, "type": "private"}), JSON, TGH, 400,
         "64-bit"),
    case("tg-user-id-negative", "POST", TG, tg_message(**{"from": {"id": -5, "is_bot": False, "first_name": "A"}}),
         JSON, TGH, 400, "message.from.id is not a positive 64-bit integer"),
    case("tg-message-id-zero", "POST", TG, tg_message(message_id=0), JSON, TGH, 400, "message_id"),
    case("tg-update-id-negative", "POST", TG, js({"update_id": -1, "message": MSG}), JSON, TGH, 400, "update_id"),
    case("tg-group-chat-without-type", "POST", TG, tg_message(chat={"id": -1001234567890}), JSON, TGH, 400,
         "group chat without its type"),
    case("inbox-lead-traversal", "POST", INBOX, umnico("1/../../managers"), JSON, {}, 400, "positive integer id"),
    case("inbox-lead-negative", "POST", INBOX, umnico(-64950001), JSON, {}, 400, "positive integer id"),
    case("inbox-conversation-traversal", "POST", INBOX, generic(conversation_id="../../v1.3/managers"), JSON, {}, 400,
         "conversation_id"),
    case("inbox-message-id-space", "POST", INBOX, generic(message_id="a b"), JSON, {}, 400, "message_id"),
    case("forms-form-id-traversal", "POST", FORMS, js(forms_api(formId="../../drive")), JSON, FORMSH, 400, "form id"),
    case("forms-query-form-traversal", "POST", FORMS + "?form=..%2F..%2Fx",
         js({"Name": ["Jane"], "Timestamp": ["6/7/2015 20:54:13"]}), JSON, FORMSH, 400, "form id"),
    case("forms-response-id-slash", "POST", FORMS, js({"response_id": "a/b", "answers": {"Q": "x"}}), JSON, FORMSH,
         400, "response id"),
    case("zadarma-call-id-traversal", "POST", ZD, ZD_BAD_CALL, FORM, ZD_BAD_CALL_H, 400, "pbx_call_id"),
    # over-long fields
    case("tg-callback-data-65-bytes", "POST", TG, tg_button("x" * 65), JSON, TGH, 400, "1-64 bytes"),
    case("tg-callback-data-66-bytes-cyrillic", "POST", TG, tg_button("я" * 33), JSON, TGH, 400, "1-64 bytes"),
    case("tg-callback-data-empty", "POST", TG, tg_button(""), JSON, TGH, 400, "1-64 bytes"),
    case("tg-text-4097", "POST", TG, tg_message(text="x" * 4097), JSON, TGH, 400, "at most 4096"),
    case("tg-caption-1025", "POST", TG, tg_message(text=None, caption="x" * 1025), JSON, TGH, 400, "at most 1024"),
    case("inbox-conversation-129", "POST", INBOX, generic(conversation_id="c" * 129), JSON, {}, 400, "conversation_id"),
    case("forms-question-id-129", "POST", FORMS, js(forms_api(answers={"q" * 129: {"questionId": "q" * 129,
                                                                  "textAnswers": {"answers": [{"value": "x"}]}}})),
         JSON, FORMSH, 400, "answer"),
    # wrong JSON types and shapes the vendor never sends
    case("tg-callback-data-number", "POST", TG, tg_button(5), JSON, TGH, 400, "callback_query.data"),
    case("pf-task-as-list", "POST", PF, pf([1042]), JSON, PFH, 400, "task.id is missing"),
    case("pf-body-as-list", "POST", PF, b"[1, 2]", JSON, PFH, 400, "expected a JSON object"),
    case("inbox-message-as-text", "POST", INBOX, js({"type": "message.incoming", "leadId": 5, "message": "hi"}),
         JSON, {}, 400, "'message' is not an object"),
    case("inbox-lead-boolean", "POST", INBOX, umnico(True), JSON, {}, 400, "without leadId"),
    case("forms-answer-object", "POST", FORMS, js({"answers": {"Q": {"x": 1}}}), JSON, FORMSH, 400, "not text"),
    case("forms-answer-number", "POST", FORMS, js({"answers": {"Q": 5}}), JSON, FORMSH, 400, "not text"),
    case("forms-named-values-text", "POST", FORMS, js({"namedValues": {"Q": "a"}}), JSON, FORMSH, 400,
         "not a list of text"),
    case("forms-api-answer-without-question-id", "POST", FORMS,
         js(forms_api(answers={"3f8a21c0": {"textAnswers": {"answers": [{"value": "x"}]}}})), JSON, FORMSH, 400,
         "questionId"),
    case("forms-api-value-number", "POST", FORMS,
         js(forms_api(answers={"3f8a21c0": {"questionId": "3f8a21c0", "textAnswers": {"answers": [{"value": 5}]}}})),
         JSON, FORMSH, 400, "not text"),
    case("forms-api-response-id-number", "POST", FORMS, js(forms_api(responseId=5)), JSON, FORMSH, 400, "responseId"),
    case("forms-api-unknown-key", "POST", FORMS, js(forms_api(extra=1)), JSON, FORMSH, 400, "unexpected key"),
    case("zadarma-duration-words", "POST", ZD, ZD_BAD_DUR, FORM, ZD_BAD_DUR_H, 400, "duration"),
    # header and query abuse
    case("amo-token-twice-wrong-first", "POST", "/hooks/quickstart-amo?token=wrong&token=amo-secret", amo("1"), FORM,
         {}, 401, "token"),
    case("amo-token-with-nul", "POST", "/hooks/quickstart-amo?token=amo-secret%00", amo("1"), FORM, {}, 401, "token"),
    case("amo-token-as-array", "POST", "/hooks/quickstart-amo?token[]=amo-secret", amo("1"), FORM, {}, 401, "token"),
    case("tg-secret-header-folded-twice", "POST", TG, tg_message(),
         JSON, {"X-Telegram-Bot-Api-Secret-Token": "tg-secret, tg-secret"}, 401, "Secret"),
    case("pf-secret-header-latin1", "POST", PF, GOOD_PF, JSON, {"X-Crmbridge-Token": "pf-s\xe9cret"}, 401, "secret"),
]


# --- the app, in-process and under gunicorn ------------------------------------------------------

def hostile_config(target: Path) -> Path:
    shutil.copytree(QUICKSTART, target)
    path = target / "connections.yaml"
    conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    conf["connections"].update(CONNECTIONS)
    path.write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return target


def open_store() -> Redis:
    store = Redis.from_url(TEST_REDIS_URL)
    try:
        store.ping()
    except Exception as exc:
        pytest.fail(f"Redis at {TEST_REDIS_URL} does not answer: {exc}")
    if store.connection_pool.connection_kwargs.get("db", 0) == 0:
        pytest.fail("refusing to flush database 0; set CRMBRIDGE_TEST_REDIS_URL")
    return store


def leftovers(store: Redis) -> dict[str, Any]:
    return {"queued": store.llen(f"rq:queue:{QUEUE}"),
            "seen": [k.decode() for k in store.scan_iter(f"{PREFIX}seen:*", count=1000)][:3],
            "keys": store.dbsize()}


NOTHING = {"queued": 0, "seen": [], "keys": 0}


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    from webhooks import create_app
    store = open_store()
    store.flushdb()
    config = hostile_config(tmp_path_factory.mktemp("hostile") / "config")
    app = create_app(settings=Settings(config_dir=config, redis_url=TEST_REDIS_URL, redis_prefix=PREFIX,
                                       queue_name=QUEUE, environ=ENV))
    yield app, store, config
    app.extensions["crmbridge"].backend.close()
    store.flushdb()
    store.close()


def answer_of(status: int, body: Any, c: Case) -> list[str]:
    """What is wrong with one answer ([] when it is the one the case expects)."""
    wrong = []
    if status != c.status:
        wrong.append(f"status {status}, expected {c.status}")
    if not isinstance(body, dict):
        return wrong + [f"body {body!r} is not a JSON object"]
    if c.status == 200:
        if body != {"accepted": 0, "duplicates": 0} and "accepted" not in body:
            wrong.append(f"body {body}")
    else:
        reason = body.get("error")
        if not isinstance(reason, str) or not reason or "\n" in reason:
            wrong.append(f"error {reason!r} is not one line")
        elif c.error and c.error not in reason:
            wrong.append(f"error {reason!r} does not say {c.error!r}")
    return wrong


@pytest.mark.parametrize("c", CASES)
def test_hostile_request_is_refused_and_leaves_nothing(door, c: Case):
    app, store, _ = door
    store.flushdb()
    headers = dict(c.headers)
    if c.ctype:
        headers["Content-Type"] = c.ctype
    resp = app.test_client().open(c.path, method=c.method, data=c.body, headers=headers)
    body = resp.get_json(silent=True)
    left = leftovers(store)
    print(f"\n  {c.method} {c.path[:50]} -> {resp.status_code} {json.dumps(body, ensure_ascii=False)[:120]}")
    assert answer_of(resp.status_code, body, c) == []
    if c.status == 200:   # acknowledged, but read as something else: only b24-bad-percent-utf8
        assert body == {"accepted": 1, "duplicates": 0}
        store.flushdb()
    else:
        assert left == NOTHING


def test_the_table_is_big_enough_and_covers_every_receiver():
    assert len(CASES) >= 60
    paths = {c.values[0].path.split("?")[0] for c in CASES}
    for receiver in ("/hooks/quickstart-amo", TG, PF, B24, FORMS, "/hooks/hostile-inbox", ZD):
        assert receiver in paths, receiver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn(door, tmp_path_factory):
    """`gunicorn 'webhooks:create_app()'` as README's Production section runs it (2 sync workers here)."""
    _, store, config = door
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    env.update(ENV, REDIS_URL=TEST_REDIS_URL, CRMBRIDGE_CONFIG=str(config), CRMBRIDGE_REDIS_PREFIX=PREFIX,
               CRMBRIDGE_QUEUE=QUEUE, PYTHONDONTWRITEBYTECODE="1")
    log = open(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log", "wb")   # noqa: SIM115 (closed below)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--workers", "2", "--bind",
                             f"127.0.0.1:{port}", "webhooks:create_app()"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            pytest.fail("gunicorn did not answer /healthz within 60 s")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)   # gunicorn's own process group, started above
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_the_whole_table_under_gunicorn(door, gunicorn):
    """Every case over a real socket to gunicorn's sync workers: same answers, nothing left behind."""
    _, store, _ = door
    session = requests.Session()
    answers, wrong = {}, {}
    for param in CASES:
        c: Case = param.values[0]
        store.flushdb()
        headers = dict(c.headers)
        if c.ctype:
            headers["Content-Type"] = c.ctype
        resp = session.request(c.method, gunicorn + c.path, data=c.body, headers=headers, timeout=30)
        try:
            body = resp.json()
        except ValueError:
            body = resp.text[:80]
        answers[param.id] = resp.status_code
        problems = answer_of(resp.status_code, body, c)
        left = leftovers(store)
        if c.status != 200 and left != NOTHING:
            problems.append(f"left {left}")
        if problems:
            wrong[param.id] = problems
    store.flushdb()
    by_status: dict[int, int] = {}
    for status in answers.values():
        by_status[status] = by_status.get(status, 0) + 1
    print(f"\n=== {len(answers)} hostile requests under gunicorn: {dict(sorted(by_status.items()))} ===")
    assert wrong == {}


# --- what Telegram itself sends is accepted ---------------------------------------------------------

@pytest.mark.parametrize("name", ["official_callback_query_inline.json", "official_message_document.json",
                                  "official_message_text_no_chat_type.json"])
def test_the_bot_api_documentation_sample_updates_are_accepted(door, name):
    app, store, _ = door
    store.flushdb()
    resp = app.test_client().post(TG, data=(PAYLOADS / "telegram" / name).read_bytes(), content_type=JSON, headers=TGH)
    assert (resp.status_code, resp.get_json()) == (200, {"accepted": 1, "duplicates": 0})
    store.flushdb()


def test_bounds_accept_what_telegram_sends_at_the_limit():
    from connectors import telegram
    conn = Connection(name="bot", type="telegram", webhook_secret="s")
    [button] = telegram.parse(RawWebhook({}, JSON, tg_button("я" * 32)), conn)          # 64 bytes exactly
    assert button.data["button"] == "я" * 32
    [text] = telegram.parse(RawWebhook({}, JSON, tg_message(text="😀" * 4096)), conn)   # 4096 code points
    assert len(text.data["text"]) == 4096
    [group] = telegram.parse(RawWebhook({}, JSON, tg_message(chat={"id": -(2 ** 63), "type": "supergroup"})), conn)
    assert group.entity == Entity("chat", str(-(2 ** 63)))


def test_a_forms_api_response_is_read_by_question_id_with_its_response_id():
    from connectors import forms
    conn = Connection(name="brief", type="forms", webhook_secret="s",
                      options={"questions": {"3f8a21c0": "Назва компанії"}})
    [event] = forms.parse(RawWebhook({}, JSON, (PAYLOADS / "forms" / "api_form_response.json").read_bytes()), conn)
    assert event.id == "brief:response:ACYDBNj8a2Lq4c0Xr9Vt_3wQk1sPz"
    assert event.entity == Entity("form", "1BxiMVs0XRA5nFMdKvBdBZjgmUUqptlbs74OgvE2upms")
    assert event.data["email"] == "owner@zerno.example"
    assert event.data["submitted_at"] == "2025-11-24T12:31:07.512Z"
    assert event.data["answers"] == {
        "Назва компанії": "Кав'ярня «Зерно»", "5b1e77d2": ["Instagram", "Facebook"],
        "7c40aa19": [{"id": "1Zq3x-brief-logo", "name": "logo.png", "mime_type": "image/png"}]}


# --- defence in depth: no client lets a dot segment leave -------------------------------------------

def test_segments_are_quoted_whole_and_dot_segments_never_leave():
    assert segment("1/../../account") == "1%2F..%2F..%2Faccount"
    assert not has_dot_segments(f"/api/v4/leads/{segment('1/../../account')}")
    for path in ("/api/v4/leads/1/../../account", "/task/./1", "/api/v4/leads/%2e%2e/account", "/x/%2E%2e"):
        assert has_dot_segments(path), path
    from connectors.amocrm import Client as AmoClient
    from connectors.planfix import Client as PlanfixClient
    calls: list[tuple[str, str, Any]] = []
    for client_type, conn in ((AmoClient, Connection(name="amo", type="amocrm", base_url="https://x.amocrm.ru")),
                              (PlanfixClient, Connection(name="pf", type="planfix", base_url="https://x.planfix.com/rest"))):
        client = client_type(conn, recorder=lambda m, url, body: calls.append((m, url, body)))
        with pytest.raises(PermanentApiError, match="'..' segments"):
            client.request("GET", "/api/v4/leads/1/../../account")
        client.request("GET", f"/task/{segment('1/../../user')}")
    assert [url for _, url, _ in calls] == ["https://x.amocrm.ru/task/1%2F..%2F..%2Fuser",
                                            "https://x.planfix.com/rest/task/1%2F..%2F..%2Fuser"]


def test_an_id_a_rule_gives_reaches_the_vendor_as_one_quoted_segment():
    """A rule may name a record by a template (`entity: "lead:{{ … }}"`); the client quotes it."""
    from connectors.amocrm import Client as AmoClient
    calls: list[str] = []
    client = AmoClient(Connection(name="amo", type="amocrm", base_url="https://x.amocrm.ru"),
                       recorder=lambda m, url, body: calls.append(url))
    client.set_fields(Entity("lead", "1/../../account"), {})
    assert calls and all("/account" not in url and "%2F..%2F" in url for url in calls), calls


def test_positive_id_grammar():
    for good in ("1", "759", str(2 ** 63 - 1), 42):
        assert positive_id(good, "id") == str(good)
    for bad in ("", "0", "-1", "01", "1.0", "1e3", " 1", "1 ", "٣", "1/2", str(2 ** 63), "9" * 20, True, 1.5, None,
                [1], 2 ** 63):
        with pytest.raises(BadPayload):
            positive_id(bad, "id")


def test_json_with_a_key_named_twice_is_refused_at_any_depth():
    with pytest.raises(BadPayload, match="'a' twice"):
        parse_json(b'{"x": [{"a": 1, "a": 2}]}')
    assert parse_json(b'{"x": [{"a": 1}, {"a": 2}]}') == {"x": [{"a": 1}, {"a": 2}]}


# --- property: any text through any parser -----------------------------------------------------------

RECEIVERS = {name: module for name, module in CONNECTORS.items()}
CONTENT = {name: getattr(module, "CONTENT_TYPES", ()) or (JSON,) for name, module in RECEIVERS.items()}
ID_CHECK = {   # what a valid entity id is, per source (the grammars beside each parser)
    "amocrm": lambda e: positive_id(e.entity.id, "id") == e.entity.id,
    "bitrix24": lambda e: positive_id(e.entity.id, "id") == e.entity.id,
    "planfix": lambda e: positive_id(e.entity.id, "id") == e.entity.id,
    "telegram": lambda e: (e.entity.id.startswith("inline:") or e.entity.type != "chat"
                           or -(2 ** 63) <= int(e.entity.id) < 2 ** 63 and int(e.entity.id) != 0),
    "forms": lambda e: bool(e.entity.id) and "/" not in e.entity.id,
    "inbox": lambda e: bool(e.entity.id) and "/" not in e.entity.id and " " not in e.entity.id,
    "zadarma": lambda e: bool(e.entity.id) and "/" not in e.entity.id,
}


def shaped_text() -> st.SearchStrategy[str]:
    """Arbitrary text, and text in the shapes the parsers look for (so the search gets past the first check)."""
    word = st.text(max_size=40)
    ident = st.one_of(st.integers(min_value=-(2 ** 70), max_value=2 ** 70).map(str), word)
    json_like = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | word,
                             lambda inner: st.lists(inner, max_size=4) | st.dictionaries(word, inner, max_size=4),
                             max_leaves=12)
    return st.one_of(
        st.text(max_size=300),
        st.builds(lambda i: f"leads[status][0][id]={i}&leads[status][0][status_id]=1", ident),
        st.builds(lambda e, i: f"event={e}&data[FIELDS][ID]={i}&data[FIELDS_AFTER][ID]={i}",
                  st.sampled_from(["ONCRMDEALUPDATE", "ONTASKADD", "x"]), ident),
        st.builds(lambda e, i: f"event=NOTIFY_OUT_END&pbx_call_id={i}&duration={e}", word, ident),
        st.builds(lambda v: json.dumps(v), json_like),
        st.builds(lambda i, t: json.dumps({"update_id": 1, "message": {**MSG, "chat": {"id": i, "type": "private"},
                                                                        "text": t}}),
                  st.integers(min_value=-(2 ** 64), max_value=2 ** 64), word),
        st.builds(lambda i, v: json.dumps({"event": "task.updated", "task": {"id": i, "status": v}}), ident, json_like),
        st.builds(lambda i, v: json.dumps({"type": "message.incoming", "leadId": i, "message": v}), ident, json_like),
        st.builds(lambda i, v: json.dumps({"event": "message", "message_id": i, "conversation_id": i, "text": v}),
                  ident, word),
        st.builds(lambda i, a: json.dumps({"formId": i, "responseId": i, "answers": a}), ident, json_like),
        st.builds(lambda a: json.dumps({"answers": a}), json_like),
    )


@pytest.mark.parametrize("name", sorted(RECEIVERS))
def test_any_text_through_a_parser_gives_valid_events_or_a_webhook_error(name):
    module = RECEIVERS[name]
    conn = Connection(name="c", type=name, webhook_secret="s", base_url="https://x.example/rest")

    @hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=shaped_text(), ctype=st.sampled_from(CONTENT[name]))
    def check(text: str, ctype: str) -> None:
        raw = RawWebhook(headers={"Content-Type": ctype}, content_type=ctype, body=text.encode("utf-8", "surrogatepass"),
                         query={})
        try:
            events = module.parse(raw, conn)
        except WebhookError as exc:
            assert 400 <= exc.status < 500 and str(exc)
            return
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, Event)
            assert ID_CHECK.get(name, lambda e: True)(event), event.entity
            json.dumps(event.to_dict(), ensure_ascii=False).encode("utf-8")   # it can be queued

    check()
