"""The receiver: status codes for every kind of caller and body, and nothing queued when refused."""
from __future__ import annotations


from typing import Any

import pytest

from config.settings import Settings
from tests.conftest import TEST_REDIS_URL, payload

FORM = "application/x-www-form-urlencoded"
AMO = "/hooks/quickstart-amo?token=amo-secret"
TG_HEADERS = {"X-Telegram-Bot-Api-Secret-Token": "tg-secret"}


def queued(runtime) -> int:
    return runtime.backend.queue.count


def test_amocrm_webhook_is_queued_once(client, runtime):
    body = payload("amocrm/lead_status_changed_full.form")
    first = client.post(AMO, data=body, content_type=FORM)
    assert (first.status_code, first.json) == (200, {"accepted": 1, "duplicates": 0})
    again = client.post(AMO, data=body, content_type=FORM)
    assert (again.status_code, again.json) == (200, {"accepted": 0, "duplicates": 1})
    assert queued(runtime) == 1


def test_telegram_update_is_queued(client, runtime):
    resp = client.post("/hooks/quickstart-bot", data=payload("telegram/callback_query.json"),
                       content_type="application/json", headers=TG_HEADERS)
    assert (resp.status_code, resp.json) == (200, {"accepted": 1, "duplicates": 0})
    assert queued(runtime) == 1


BAD = [
    pytest.param("POST", "/hooks/nobody?token=amo-secret", b"x", FORM, {}, 404, "unknown connection 'nobody'", id="unknown-connection"),
    pytest.param("POST", "/hooks/quickstart-amo", payload("amocrm/lead_added.form"), FORM, {}, 401,
                 "missing or wrong token in the webhook URL", id="amo-no-token"),
    pytest.param("POST", "/hooks/quickstart-amo?token=wrong", payload("amocrm/lead_added.form"), FORM, {}, 401,
                 "missing or wrong token in the webhook URL", id="amo-wrong-token"),
    pytest.param("POST", "/hooks/quickstart-bot", payload("telegram/callback_query.json"), "application/json",
                 {}, 401, "missing or wrong X-Telegram-Bot-Api-Secret-Token header", id="tg-no-secret"),
    pytest.param("GET", AMO, None, None, {}, 405, "The method is not allowed for the requested URL.", id="wrong-method"),
    pytest.param("POST", AMO, b'{"a": 1}', "application/json", {}, 415,
                 f"content type 'application/json'; expected {FORM}", id="amo-json"),
    pytest.param("POST", AMO, b"leads", None, {}, 415, f"content type 'missing'; expected {FORM}", id="no-content-type"),
    pytest.param("POST", AMO, b"account[subdomain]=x", FORM, {}, 400,
                 "no amoCRM entity found (expected keys like leads[status][0][id])", id="amo-no-entity"),
    pytest.param("POST", AMO, b"\xff\xfe\xfd", FORM, {}, 400, "body is not UTF-8 (byte 0)", id="amo-bad-utf8"),
    pytest.param("POST", AMO, "&".join(f"k{i}=v" for i in range(6000)).encode(), FORM, {}, 400,
                 "more than 5000 form fields", id="amo-many-keys"),
    pytest.param("POST", "/hooks/quickstart-bot", b'{"update_id": 1, "message": {"chat": 5}}', "application/json",
                 TG_HEADERS, 400, None, id="tg-wrong-types"),
    pytest.param("POST", "/hooks/quickstart-bot", b"[" * 50000, "application/json", TG_HEADERS, 400,
                 "JSON nested deeper than 32", id="tg-deep-json"),
    pytest.param("POST", "/hooks/quickstart-bot", b"\x00\x01", "application/json", TG_HEADERS, 400,
                 None, id="tg-binary"),
    pytest.param("POST", AMO, b"a=" + b"x" * (1024 * 1024 + 1), FORM, {}, 413, None, id="too-big"),
]


@pytest.mark.parametrize("method, url, body, ctype, headers, status, reason", BAD)
def test_bad_requests_are_refused_and_nothing_is_queued(client, runtime, method, url, body, ctype, headers, status, reason):
    resp = client.open(url, method=method, data=body, content_type=ctype, headers=headers)
    assert resp.status_code == status
    assert "\n" not in resp.json["error"]
    if reason:
        assert resp.json["error"] == reason
    assert queued(runtime) == 0


def test_healthz(client):
    resp = client.get("/healthz")
    assert (resp.status_code, resp.json) == (200, {"redis": "ok", "durable": True})


def test_redis_down_answers_503_and_acknowledges_nothing(config_dir, env, redis_db):
    from webhooks import create_app
    dead = Settings(config_dir=config_dir, redis_url="redis://127.0.0.1:1/0", environ=env, testing=True)
    app = create_app(settings=dead)
    client = app.test_client()
    resp = client.post(AMO, data=payload("amocrm/lead_added.form"), content_type=FORM)
    assert (resp.status_code, resp.json) == (503, {"error": "queue unavailable; retry later"})
    assert client.get("/healthz").status_code == 503


def test_invalid_configuration_refuses_to_start(config_dir, env):
    from config.loader import ConfigErrors
    from webhooks import create_app
    (config_dir / "rules" / "broken.yaml").write_text("rules:\n  - name: x\n    on: stage.changed\n    do: [{fly: 1}]\n")
    with pytest.raises(ConfigErrors) as exc:
        create_app(settings=Settings(config_dir=config_dir, redis_url=TEST_REDIS_URL, environ=env))
    from rules import MODULES
    assert str(exc.value).splitlines()[0].endswith(
        "broken.yaml:4: rule \"x\" → do[0]: unknown action 'fly'; expected one of: " + ", ".join(sorted(MODULES)))


@pytest.fixture(params=["fast", "rq"])
def intake_path(request, runtime):
    """Both ways intake queues: rqintake.py's one script (the default) and RQ's enqueue_call in a
    MULTI (CRMBRIDGE_INTAKE=rq)."""
    if request.param == "rq":
        runtime.backend.fast = None
    return request.param


def test_a_failed_enqueue_leaves_no_seen_mark(client, runtime, intake_path, monkeypatch):
    """The step that queues the job (with the seen-mark and the ticket) fails: nothing of it is
    written, and no seen-mark is left that would drop the platform's retry as a duplicate."""
    from redis.client import Pipeline
    from redis.exceptions import ConnectionError as RedisConnectionError

    def broken(*args, **kwargs):
        raise RedisConnectionError("connection lost while queueing")
    if intake_path == "fast":
        monkeypatch.setattr(runtime.backend.fast, "_script", broken)   # the one script that does it all
    else:
        monkeypatch.setattr(Pipeline, "execute", broken)               # the MULTI after the SET NX
    body = payload("amocrm/lead_status_changed_full.form")
    assert client.post(AMO, data=body, content_type=FORM).status_code == 503
    assert runtime.store.keys(runtime.keys("seen", "*")) == [] and runtime.store.keys(runtime.keys("ticket", "*")) == []
    monkeypatch.undo()
    again = client.post(AMO, data=body, content_type=FORM)   # the platform's retry is not a "duplicate"
    assert again.json == {"accepted": 1, "duplicates": 0} and queued(runtime) == 1


def test_a_mark_that_cannot_be_given_back_expires_soon(client, runtime, monkeypatch):
    """The public path: Redis goes away between the seen-mark and the job (or this process dies
    there): the mark, still "queueing", lives PENDING_TTL seconds, not the dedupe window, so a later
    retry is queued."""
    from redis.client import Pipeline
    from redis.exceptions import ConnectionError as RedisConnectionError
    runtime.backend.fast = None

    def broken(*args, **kwargs):
        raise RedisConnectionError("Redis went away")
    monkeypatch.setattr(Pipeline, "execute", broken)
    monkeypatch.setattr(runtime.backend, "_give_back", broken)
    assert client.post(AMO, data=payload("amocrm/lead_status_changed_full.form"), content_type=FORM).status_code == 503
    [mark] = runtime.store.keys(runtime.keys("seen", "*"))
    assert runtime.store.get(mark) == runtime.backend.PENDING
    assert 0 < runtime.store.ttl(mark) <= runtime.backend.PENDING_TTL < runtime.settings.dedupe_ttl
    assert queued(runtime) == 0 and runtime.store.keys(runtime.keys("ticket", "*")) == []


def test_concurrent_copies_of_one_webhook_are_queued_once(live_server, runtime, intake_path):
    import threading

    import requests
    body = payload("amocrm/lead_status_changed_full.form")
    answers: list[dict] = []

    def send() -> None:
        answers.append(requests.post(f"{live_server}{AMO}", data=body, headers={"Content-Type": FORM}, timeout=5).json())
    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sum(a["accepted"] for a in answers) == 1 and sum(a["duplicates"] for a in answers) == 7
    assert queued(runtime) == 1


def test_the_queued_job_is_the_one_rq_would_have_written(client, runtime, intake_path):
    """Both intake paths queue what RQ's Queue.enqueue_call writes: RQ reads back our options."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    import queueing
    client.post(AMO, data=payload("amocrm/lead_status_changed_full.form"), content_type=FORM)
    [job_id] = runtime.backend.queue.job_ids
    job = Job.fetch(job_id, connection=runtime.store, serializer=JSONSerializer)
    [event] = job.args
    assert (job.func_name, job.origin, job.get_status()) == ("worker.handle_event", runtime.backend.queue.name, "queued")
    assert job_id == queueing.job_id_for("event", event["id"]) and event["entity"] == {"type": "lead", "id": "31926520"}
    assert (job.retries_left, job.retry_intervals) == (runtime.backend.retry.max, runtime.backend.retry.intervals)
    assert job.failure_callback.__name__ == "on_job_failed" and job.description == "stage.changed lead:31926520"
    assert (job.result_ttl, job.failure_ttl, job.timeout) == (queueing.RESULT_TTL, 30 * 24 * 3600, 180)
    assert job.enqueued_at is not None
    assert runtime.backend.queue.name.encode() in b"".join(runtime.store.smembers("rq:queues"))
    assert runtime.backend.order.seq(event) == 1


def redis_contents(store) -> dict[str, Any]:
    """Every key with its type and value (hashes field by field; TTL rounded to the minute)."""
    contents = {}
    for key in sorted(store.keys("*")):
        kind = store.type(key).decode()
        value = {"hash": store.hgetall, "list": lambda k: store.lrange(k, 0, -1), "set": store.smembers,
                 "zset": lambda k: store.zrange(k, 0, -1), "string": store.get}[kind](key)
        contents[key.decode()] = (kind, value, -1 if store.ttl(key) < 0 else store.ttl(key) // 60)
    return contents


def test_the_fast_intake_writes_what_rqs_enqueue_writes(runtime):
    """rqintake.py's guard: with the installed RQ, the keys and values an event's intake leaves are
    the same on the fast path (RQ's enqueue recorded once, then replayed with the job's id and
    VARYING fields replaced) as through RQ's own Queue.enqueue_call, for a job after the first
    (the recording) and for the first. When this fails, RQ changed: see rqintake.py."""
    import zlib

    from connectors import CONNECTORS
    from connectors.base import Entity, Event
    from rqintake import VARYING
    from tests.conftest import raw
    backend, store = runtime.backend, runtime.store
    conn = runtime.connections.connections["quickstart-amo"]
    first, = CONNECTORS["amocrm"].parse(raw("amocrm/lead_status_changed_full.form"), conn)
    other = Event(**{**first.__dict__, "id": "quickstart-amo:other", "kind": "entity.updated",
                     "entity": Entity("lead", "31926521")})

    def intake_of(event: Event, fast: bool) -> dict[str, Any]:
        store.flushdb()
        path = backend.accept if fast else backend.accept_public
        assert path(event.to_dict(), runtime.keys("seen", event.id), 3600)
        return redis_contents(store)
    for event in (first, other):   # the first is recorded, the other is built from the recording
        ours, theirs = intake_of(event, fast=True), intake_of(event, fast=False)
        assert ours.keys() == theirs.keys()
        for key, (kind, value, ttl) in theirs.items():
            assert (ours[key][0], ours[key][2]) == (kind, ttl), key
            if kind != "hash":
                assert ours[key][1] == value, key
                continue
            mine = dict(ours[key][1])
            assert zlib.decompress(mine.pop(b"data")) == zlib.decompress(value.pop(b"data"))
            for name in (b"created_at", b"enqueued_at"):
                assert mine.pop(name)[:16] == value.pop(name)[:16]      # the same minute: stamps differ by µs
            assert mine == value, key
    assert {"data", "description", "created_at", "enqueued_at"} == set(VARYING)
    assert backend.fast._recording is not None


def test_flask_hooks_and_error_handlers_see_the_webhook_view(settings, monkeypatch):
    """POST /hooks/<name> is an ordinary Flask view: an app's after_request hook (metrics,
    tracing) sees every webhook, and a bug in it gets the app's error handler (Flask logs it)."""
    import dataclasses

    from flask import request

    from connectors import CONNECTORS
    from webhooks import create_app
    app = create_app(settings=dataclasses.replace(settings, testing=False))
    seen: list[tuple[str, int]] = []

    @app.after_request
    def record(response):
        seen.append((request.path, response.status_code))
        return response
    client = app.test_client()
    assert client.post(AMO, data=payload("amocrm/lead_added.form"), content_type=FORM).status_code == 200

    def broken(raw, conn):
        raise RuntimeError("a bug in a parser")
    monkeypatch.setattr(CONNECTORS["amocrm"], "parse", broken)
    resp = client.post(AMO, data=payload("amocrm/lead_added.form"), content_type=FORM)
    assert (resp.status_code, resp.json) == (500, {"error": "internal error"})
    assert seen == [("/hooks/quickstart-amo", 200), ("/hooks/quickstart-amo", 500)]
    app.extensions["crmbridge"].backend.close()


def test_a_connection_named_in_cyrillic_is_found_by_its_utf8_path(client):
    """The WSGI path is latin-1 text (PEP 3333); the receiver decodes the name as UTF-8, as Flask's
    routing does: an unknown Cyrillic name is reported as such, not as mojibake."""
    resp = client.post("/hooks/магазин", data=b"{}", content_type="application/json")
    assert resp.status_code == 404
    assert resp.json == {"error": "unknown connection 'магазин'"}


@pytest.fixture
def gunicorn(settings, config_dir, env):
    """The app under gunicorn, as README's Production section runs it (one sync worker here),
    on the test database, prefix and queue of the `runtime` fixture."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import requests
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}, **env,
               "REDIS_URL": TEST_REDIS_URL, "CRMBRIDGE_CONFIG": str(config_dir),
               "CRMBRIDGE_REDIS_PREFIX": settings.redis_prefix, "CRMBRIDGE_QUEUE": settings.queue_name}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "--workers", "1", "--bind",
                             f"127.0.0.1:{port}", "webhooks:create_app()"], cwd=root, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:   # not listening yet, or still booting
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post_raw(port: int, body: bytes, *, content_length: int) -> tuple[int, dict]:
    """POST over a socket, declaring `content_length`, sending `body`, then closing our side."""
    import json
    import socket
    head = (f"POST {AMO} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {FORM}\r\n"
            f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body)
        s.shutdown(socket.SHUT_WR)       # the client is gone before the rest of its body
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_a_body_shorter_than_its_content_length_is_refused_under_gunicorn(gunicorn, runtime):
    """gunicorn hands the raw stream to the app (wsgi.input_terminated): a client that closes early
    leaves a short body that would otherwise parse (an amoCRM form cut after a field)."""
    body = payload("amocrm/lead_status_changed_full.form")
    cut = body[:body.index(b"&", len(body) // 2)]
    status, answer = post_raw(gunicorn, cut, content_length=len(body))
    assert (status, answer) == (400, {"error": f"body ended after {len(cut)} of its {len(body)} bytes"})
    assert queued(runtime) == 0 and runtime.store.keys(runtime.keys("seen", "*")) == []
    assert post_raw(gunicorn, body, content_length=len(body)) == (200, {"accepted": 1, "duplicates": 0})
    assert queued(runtime) == 1
