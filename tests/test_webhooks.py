"""The receiver: status codes for every kind of caller and body, and nothing queued when refused."""
from __future__ import annotations


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


def test_a_failed_enqueue_leaves_no_seen_mark(client, runtime, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    def broken(*args, **kwargs):
        raise RedisConnectionError("connection lost while queueing")
    monkeypatch.setattr(runtime.backend, "_accept", broken)   # the one script that marks, numbers and queues
    body = payload("amocrm/lead_status_changed_full.form")
    assert client.post(AMO, data=body, content_type=FORM).status_code == 503
    assert runtime.store.keys(runtime.keys("seen", "*")) == []
    monkeypatch.undo()
    again = client.post(AMO, data=body, content_type=FORM)   # the platform's retry is not a "duplicate"
    assert again.json == {"accepted": 1, "duplicates": 0} and queued(runtime) == 1


def test_concurrent_copies_of_one_webhook_are_queued_once(live_server, runtime):
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


def test_the_queued_job_is_the_one_rq_would_have_written(client, runtime):
    """accept() writes RQ's job hash itself (one Lua script): RQ must read back what enqueue() writes."""
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


def test_queued_jobs_after_the_first_are_built_as_rq_builds_them(runtime):
    """RQBackend.event_job builds RQ's job hash once through RQ, then by replacing the fields that
    differ from event to event: the result must be field for field what RQ builds."""
    import zlib

    from rq.scripts import _build_hset_args

    from connectors.base import Event
    from tests.conftest import raw
    backend = runtime.backend
    conn = runtime.connections.connections["quickstart-amo"]
    from connectors import CONNECTORS
    first, = CONNECTORS["amocrm"].parse(raw("amocrm/lead_status_changed_full.form"), conn)
    backend.event_job(first.to_dict())                               # the template
    other = Event(**{**first.__dict__, "id": "quickstart-amo:other", "kind": "entity.updated"}).to_dict()
    job_id, fields = backend.event_job(other)
    job = backend.queue.create_job("worker.handle_event", args=(other,), job_id=job_id, **backend._job_options(other))
    backend.queue._prepare_for_queue(job)
    ours, theirs = dict(zip(fields[::2], fields[1::2])), dict(zip(*[iter(_build_hset_args(job))] * 2))
    assert ours.keys() == theirs.keys()
    for name in ("data",):
        assert zlib.decompress(ours.pop(name)) == zlib.decompress(theirs.pop(name))
    for name in ("created_at", "enqueued_at"):
        assert ours.pop(name)[:16] == theirs.pop(name)[:16]      # the same minute: stamps differ by µs
    assert ours == theirs


def test_a_connection_named_in_cyrillic_is_found_by_its_utf8_path(client):
    """The WSGI path is latin-1 text (PEP 3333); the receiver decodes the name as UTF-8, as Flask's
    routing does: an unknown Cyrillic name is reported as such, not as mojibake."""
    resp = client.post("/hooks/магазин", data=b"{}", content_type="application/json")
    assert resp.status_code == 404
    assert resp.json == {"error": "unknown connection 'магазин'"}
