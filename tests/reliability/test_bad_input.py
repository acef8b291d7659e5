"""Bad input at the door: every refusal has its status, nothing is queued, no dedupe mark or
order ticket is left behind, and nothing answers 500.

All requests go over a real socket to the app served by werkzeug (requests, or a raw socket for
what requests will not send: a lying Content-Length, a chunked body).
"""
from __future__ import annotations

import hmac
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.reliability.harness import (
    AMO_SECRET,
    FORM,
    PAYLOADS,
    TEST_REDIS_URL,
    TG_SECRET,
    Deployment,
    LiveApp,
    amo_status_form,
    open_test_db,
    quickstart_config,
    report,
    seeded,
    vendor_env,
)

PREFIX, QUEUE = "crmrel-input:", "crmrel-input"
AMO = f"/hooks/quickstart-amo?token={AMO_SECRET}"
TG = "/hooks/quickstart-bot"
JSON = "application/json"
TGH = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
MIB = 1024 * 1024

VALID_AMO = amo_status_form(900_001)
VALID_TG = (PAYLOADS / "telegram" / "callback_query.json").read_bytes()
MSG = {"message_id": 7, "date": 1_700_000_000, "chat": {"id": 5, "type": "private"},
       "from": {"id": 5, "is_bot": False, "first_name": "A"}, "text": "hi"}


def tg(update: Any) -> bytes:
    return json.dumps(update).encode()


def chunked(body: bytes, size: int = 65536) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


@dataclass
class Case:
    method: str
    path: str
    body: bytes | None
    ctype: str | None
    headers: dict[str, str]
    status: int
    error: str | None = None       # a part of the one-line reason expected
    raw: bytes | None = None       # the whole request, sent as is over a socket


def case(id: str, *args: Any, xfail: str | None = None, **kwargs: Any):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Case(*args, **kwargs), id=id, marks=marks)


def raw_head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\nConnection: close\r\n"
            f"{extra}\r\n").encode()


CASES = [
    # who is calling
    case("unknown-connection", "POST", "/hooks/nobody?token=amo-secret", VALID_AMO, FORM, {}, 404, "unknown connection"),
    case("unknown-connection-5000-chars", "POST", "/hooks/" + "x" * 5000, VALID_AMO, FORM, {}, 404, "unknown connection"),
    case("amo-no-token", "POST", "/hooks/quickstart-amo", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-wrong-token", "POST", "/hooks/quickstart-amo?token=wrong", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-empty-token", "POST", "/hooks/quickstart-amo?token=", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-token-prefix", "POST", "/hooks/quickstart-amo?token=amo-secre", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-token-longer", "POST", "/hooks/quickstart-amo?token=amo-secret0", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-token-other-case", "POST", "/hooks/quickstart-amo?token=AMO-SECRET", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-token-non-ascii", "POST", "/hooks/quickstart-amo?token=amo-s%C3%A9cret", VALID_AMO, FORM, {}, 401, "token"),
    case("amo-token-of-the-bot", "POST", f"/hooks/quickstart-amo?token={TG_SECRET}", VALID_AMO, FORM, {}, 401, "token"),
    case("tg-no-secret", "POST", TG, VALID_TG, JSON, {}, 401, "X-Telegram-Bot-Api-Secret-Token"),
    case("tg-wrong-secret", "POST", TG, VALID_TG, JSON, {"X-Telegram-Bot-Api-Secret-Token": "nope"}, 401, "Secret"),
    case("tg-secret-prefix", "POST", TG, VALID_TG, JSON, {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET[:-1]}, 401, "Secret"),
    case("tg-secret-latin1", "POST", TG, VALID_TG, JSON, {"X-Telegram-Bot-Api-Secret-Token": "tg-s\xe9cret"}, 401, "Secret"),
    case("tg-secret-in-url-only", "POST", f"{TG}?token={TG_SECRET}", VALID_TG, JSON, {}, 401, "Secret"),
    # how
    case("get", "GET", AMO, None, None, {}, 405),
    case("put", "PUT", AMO, VALID_AMO, FORM, {}, 405),
    case("amo-json-content-type", "POST", AMO, b'{"a": 1}', JSON, {}, 415, "content type"),
    case("amo-no-content-type", "POST", AMO, VALID_AMO, None, {}, 415, "content type 'missing'"),
    case("tg-form-content-type", "POST", TG, VALID_TG, FORM, TGH, 415, "content type"),
    case("tg-text-plain", "POST", TG, VALID_TG, "text/plain", TGH, 415, "content type"),
    # how much
    case("over-size-content-length", "POST", AMO, VALID_AMO + b"&pad=" + b"x" * MIB, FORM, {}, 413, "body over"),
    case("over-size-declared-only", "POST", AMO, None, None, {}, 413, "body over",
         raw=raw_head(AMO, "Content-Length: 50000000\r\n") + VALID_AMO),
    case("over-size-chunked", "POST", AMO, None, None, {}, 413, None,
         raw=raw_head(AMO, "Transfer-Encoding: chunked\r\n") + chunked(b"a=" + b"x" * (MIB + 100))),
    case("over-size-chunked-valid-start", "POST", AMO, None, None, {}, 413, None,
         raw=raw_head(AMO, "Transfer-Encoding: chunked\r\n") + chunked(VALID_AMO + b"&pad=" + b"x" * (MIB + 100))),
    # what
    case("amo-bad-utf8", "POST", AMO, b"leads[status][0][id]=\xff\xfe", FORM, {}, 400, "UTF-8"),
    case("tg-bad-utf8", "POST", TG, b'{"update_id": 1, "x": "\xff"}', JSON, TGH, 400, "UTF-8"),
    case("tg-truncated-json", "POST", TG, VALID_TG[: len(VALID_TG) // 2], JSON, TGH, 400, "not JSON"),
    case("tg-deep-json", "POST", TG, b'{"update_id": 1, "a": ' + b"[" * 20000 + b"]" * 20000 + b"}", JSON, TGH, 400, "nested"),
    case("tg-huge-json-array", "POST", TG, b"[" + b"0," * 300_000 + b"0]", JSON, TGH, 400, "Telegram Update"),
    case("amo-6000-form-keys", "POST", AMO, "&".join(f"k{i}=v" for i in range(6000)).encode(), FORM, {}, 400, "form fields"),
    case("amo-4000-junk-form-keys", "POST", AMO, "&".join(f"leads[x{i}]=v" for i in range(4000)).encode(), FORM, {}, 400, "no amoCRM entity"),
    case("amo-deep-form-key", "POST", AMO, b"leads[status][0]" + b"[a]" * 40 + b"=1", FORM, {}, 400, "nested deeper"),
    case("amo-form-key-clash", "POST", AMO, b"leads[status]=x&leads[status][0][id]=1", FORM, {}, 400, "clashes"),
    case("amo-item-without-id", "POST", AMO, b"leads[status][0][status_id]=10216994", FORM, {}, 400, "has no id"),
    case("amo-status-without-status-id", "POST", AMO, b"leads[status][0][id]=5", FORM, {}, 400, "status_id"),
    case("tg-update-id-string", "POST", TG, tg({"update_id": "1", "message": MSG}), JSON, TGH, 400, "integer update_id"),
    case("tg-message-as-list", "POST", TG, tg({"update_id": 1, "message": [1, 2]}), JSON, TGH, 400, "malformed"),
    case("tg-chat-as-list", "POST", TG, tg({"update_id": 1, "message": {**MSG, "chat": [5]}}), JSON, TGH, 400, "malformed"),
    case("tg-date-as-word", "POST", TG, tg({"update_id": 1, "message": {**MSG, "date": "yesterday"}}), JSON, TGH, 400, "malformed"),
    case("tg-chat-id-object", "POST", TG, tg({"update_id": 1, "message": {**MSG, "chat": {"id": {"x": 1}, "type": "private"}}}),
         JSON, TGH, 400, "message.chat.id is not an integer"),
    case("tg-update-id-boolean", "POST", TG, tg({"update_id": True, "message": MSG}), JSON, TGH, 400, "integer update_id"),
    case("tg-message-id-string", "POST", TG, tg({"update_id": 1, "message": {**MSG, "message_id": "abc"}}), JSON, TGH, 400,
         "message.message_id is not an integer"),
    case("tg-callback-without-id", "POST", TG, tg({"update_id": 1, "callback_query": {
        "from": {"id": 5, "is_bot": False, "first_name": "A"}, "chat_instance": "1", "data": "x"}}), JSON, TGH, 400, "malformed"),
    case("tg-callback-id-object", "POST", TG, tg({"update_id": 1, "callback_query": {
        "id": {"a": 1}, "from": {"id": 5, "is_bot": False, "first_name": "A"}, "chat_instance": "1", "data": "x"}}),
         JSON, TGH, 400, "callback_query.id is not a string"),
    case("amo-nul-bytes", "POST", AMO, b"\x00\x00leads\x00=\x00", FORM, {}, 400),
    case("tg-nul-bytes", "POST", TG, b'{"update_id": 1}\x00\x00', JSON, TGH, 400, "not JSON"),
    case("amo-empty-body", "POST", AMO, b"", FORM, {}, 400, "no amoCRM entity"),
    case("tg-empty-body", "POST", TG, b"", JSON, TGH, 400, "not JSON"),
    case("tg-json-null", "POST", TG, b"null", JSON, TGH, 400, "Telegram Update"),
    case("tg-json-list", "POST", TG, b"[]", JSON, TGH, 400, "Telegram Update"),
    case("tg-text-as-number", "POST", TG, tg({"update_id": 1, "message": {**MSG, "text": 5}}), JSON, TGH, 400,
         "message.text is not a string"),
    case("tg-is-bot-as-string", "POST", TG, tg({"update_id": 1, "message": {**MSG, "from": {**MSG["from"], "is_bot": "no"}}}),
         JSON, TGH, 400, "message.from.is_bot is not a boolean"),
    case("tg-photo-not-a-list", "POST", TG, tg({"update_id": 1, "message": {**MSG, "photo": {"file_id": "x"}}}), JSON, TGH,
         400, "message.photo is not a list"),
    case("tg-reply-chat-id-boolean", "POST", TG, tg({"update_id": 1, "message": {**MSG, "reply_to_message": {
        **MSG, "chat": {"id": False, "type": "private"}}}}), JSON, TGH, 400, "reply_to_message.chat.id is not an integer"),
    case("tg-unknown-kind", "POST", TG, tg({"update_id": 77, "brand_new_kind": {"x": 1}}), JSON, TGH, 200),
]


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    store = open_test_db()
    store.flushdb()
    config = quickstart_config(tmp_path_factory.mktemp("input") / "config")
    deployment = Deployment(config, TEST_REDIS_URL, PREFIX, QUEUE,
                            vendor_env("http://127.0.0.1:9", "http://127.0.0.1:9"))
    with LiveApp(deployment.settings) as live:
        yield live, store
    store.flushdb()
    store.close()


@pytest.fixture
def clean(door):
    live, store = door
    store.flushdb()
    yield live, store
    store.flushdb()


def send(base_url: str, c: Case) -> tuple[int, dict[str, Any] | None]:
    if c.raw is not None:
        return send_raw(base_url, c.raw)
    headers = dict(c.headers)
    if c.ctype:
        headers["Content-Type"] = c.ctype
    resp = requests.request(c.method, base_url + c.path, data=c.body, headers=headers, timeout=30)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


def send_raw(base_url: str, request: bytes) -> tuple[int, dict[str, Any] | None]:
    host, port = base_url.removeprefix("http://").split(":")
    data = b""
    with socket.create_connection((host, int(port)), timeout=15) as s:
        try:
            s.sendall(request)
        except OSError:  # the server may answer and close before reading it all
            pass
        for _ in range(10_000):
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else -1
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def leftovers(store) -> dict[str, Any]:
    seen = [k.decode() for k in store.scan_iter(f"{PREFIX}seen:*", count=1000)]
    tickets = [k.decode() for k in store.scan_iter(f"{PREFIX}order:*", count=1000)]
    return {"queued": store.llen(f"rq:queue:{QUEUE}"), "scheduled": store.zcard(f"rq:scheduled:{QUEUE}"),
            "seen_keys": seen[:5], "order_tickets": tickets[:5], "keys": store.dbsize()}


@pytest.mark.parametrize("c", CASES)
def test_bad_input_is_refused_and_leaves_nothing(clean, c: Case):
    live, store = clean
    status, body = send(live.url, c)
    left = leftovers(store)
    print(f"\n  {c.method} {c.path[:60]} -> {status} {json.dumps(body)[:120] if body else body}; left {left}")
    assert status != 500
    assert status == c.status, body
    assert isinstance(body, dict), "every answer is JSON"
    if c.status == 200:
        assert body == {"accepted": 0, "duplicates": 0}
    else:
        assert "\n" not in body["error"] and body["error"]
        if c.error:
            assert c.error in body["error"]
    assert left == {"queued": 0, "scheduled": 0, "seen_keys": [], "order_tickets": [], "keys": 0}


def test_there_are_enough_cases():
    assert len(CASES) >= 25


# --- the secret comparison: hmac.compare_digest decides, nothing else ----------------------------------

@pytest.mark.parametrize("connection, good, bad", [
    ("amo", lambda: {"path": AMO, "headers": {"Content-Type": FORM}, "data": amo_status_form(900_002)},
     lambda: {"path": "/hooks/quickstart-amo?token=amo-secreX", "headers": {"Content-Type": FORM},
                  "data": amo_status_form(900_003)}),
    ("telegram", lambda: {"path": TG, "headers": {**TGH, "Content-Type": JSON}, "data": VALID_TG},
     lambda: {"path": TG, "headers": {"X-Telegram-Bot-Api-Secret-Token": "tg-secreX", "Content-Type": JSON},
                  "data": VALID_TG.replace(b"4278655576057498272", b"4278655576057498273")}),
])
def test_secret_comparison_is_decided_by_hmac_compare_digest(clean, monkeypatch, connection, good, bad):
    """Behaviour, not code reading: the comparison is made by hmac.compare_digest on the given and
    configured secret, and its answer alone decides (forced False refuses the right secret, forced True
    lets a wrong one in, so no other comparison is made)."""
    live, store = clean
    real = hmac.compare_digest
    calls: list[tuple[Any, Any]] = []
    verdict: dict[str, Any] = {"force": None}

    def spy(a, b):
        calls.append((a, b))
        return real(a, b) if verdict["force"] is None else verdict["force"]

    monkeypatch.setattr(hmac, "compare_digest", spy)

    def post(kw):
        return requests.post(live.url + kw["path"], data=kw["data"], headers=kw["headers"], timeout=10)

    secret = (AMO_SECRET if connection == "amo" else TG_SECRET).encode()
    outcomes = {}
    outcomes["right secret"] = post(good()).status_code
    assert (secret, secret) in calls
    calls.clear()
    outcomes["wrong secret"] = post(bad()).status_code
    assert [c for c in calls if c[1] == secret and c[0] != secret], calls
    store.flushdb()
    verdict["force"] = False
    outcomes["right secret, compare_digest says no"] = post(good()).status_code
    verdict["force"] = True
    outcomes["wrong secret, compare_digest says yes"] = post(bad()).status_code
    store.flushdb()
    report(f"secret comparison ({connection})", {**outcomes, "compare_digest calls": len(calls)})
    assert outcomes == {"right secret": 200, "wrong secret": 401, "right secret, compare_digest says no": 401,
                        "wrong secret, compare_digest says yes": 200}


# --- a bounded fuzz: mutated real payloads never give 500, and what is accepted is what is queued ------

def mutate(rng, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(data)) if data else 0
        if op == 0 and data:
            data[pos] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2 and data:
            del data[pos:pos + rng.randint(1, 16)]
        elif op == 3:
            data = data[:pos]
        else:
            data[pos:pos] = rng.choice([b"[", b"{", b"%", b"&", b"=", b"\x00", b"[0]", b'"', b"\\u0000"]) * rng.randint(1, 40)
    return bytes(data)


def test_mutated_payloads_never_give_500(clean):
    live, store = clean
    rng = seeded(20261124)
    samples = [(AMO, FORM, {}, VALID_AMO),
               (AMO, FORM, {}, (PAYLOADS / "amocrm" / "lead_status_changed_compact.form").read_bytes()),
               (TG, JSON, TGH, VALID_TG),
               (TG, JSON, TGH, (PAYLOADS / "telegram" / "message_private_text.json").read_bytes())]
    statuses: dict[int, int] = {}
    accepted = 0
    started = time.monotonic()
    session = requests.Session()
    for i in range(400):
        if time.monotonic() - started > 40:
            break
        path, ctype, headers, body = samples[i % len(samples)]
        resp = session.post(live.url + path, data=mutate(rng, body), headers={**headers, "Content-Type": ctype},
                            timeout=10)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        if resp.status_code == 200:
            accepted += resp.json()["accepted"]
    queued = store.llen(f"rq:queue:{QUEUE}")
    seen = sum(1 for _ in store.scan_iter(f"{PREFIX}seen:*", count=1000))
    report("mutated payloads", {"sent": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
                                "accepted": accepted, "queued": queued, "dedupe keys": seen,
                                "time_s": round(time.monotonic() - started, 1)})
    assert 500 not in statuses
    assert set(statuses) <= {200, 400, 401, 413, 415}
    assert queued == accepted == seen
