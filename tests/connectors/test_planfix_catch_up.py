"""Planfix catch-up: POST /task/list with the "date of last change" filter (complex task filter
type 38), every page, and a lost status webhook caught up through worker.catch_up."""
from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import worker
from config.settings import Settings
from connectors import planfix
from connectors.base import Connection, PermanentApiError, RetryableApiError
from tests.conftest import PAYLOADS, TEST_REDIS_URL, run_worker
from tests.fakes_planfix import FakePlanfix
from pipeline import catch_up, clock

SINCE = "2026-11-24T07:05:30+00:00"   # 09:05:30 in Kyiv (UTC+2 in November)
T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)


def recorded(name: str):
    return json.loads((PAYLOADS / "planfix" / name).read_text(encoding="utf-8"))


@pytest.fixture
def fake_planfix() -> Iterator[FakePlanfix]:
    server = FakePlanfix().start()
    server.zone = "Europe/Kyiv"
    yield server
    server.stop()


def client(fake: FakePlanfix, store, **options) -> planfix.Client:
    conn = Connection(name="agency-pf", type="planfix", base_url=f"{fake.url}/rest", credentials={"token": "PF-TOKEN"},
                      webhook_secret="s", options={"timezone": "Europe/Kyiv", **options})
    return planfix.Client(conn, store=store, key_prefix="crmbridge-test:")


@pytest.fixture
def pf(fake_planfix, redis_db) -> planfix.Client:
    return client(fake_planfix, redis_db)


def add_tasks(fake: FakePlanfix, numbers, at: datetime) -> None:
    for n in numbers:
        fake.add("task", {"id": n, "name": f"Задача {n}", "status": {"id": 1, "name": "Нова"}, "processId": 7})
        fake.touch(n, at)


def test_the_filter_sent_is_the_documented_one_in_the_accounts_zone(pf, fake_planfix):
    assert pf.changed_since(SINCE) == []
    [call] = fake_planfix.received("POST", "/rest/task/list")
    assert call.body == recorded("api_task_list_changed_request.json")
    assert call.headers["Authorization"] == "Bearer PF-TOKEN"


def test_a_naive_since_is_utc_and_without_a_zone_the_filter_is_in_utc(fake_planfix, redis_db):
    client(fake_planfix, redis_db, timezone=None).changed_since("2026-11-24T07:05:30")
    [call] = fake_planfix.received("POST", "/rest/task/list")
    assert call.body["filters"][0]["value"] == {"dateType": "otherDate_withTime", "dateFrom": "24-11-2026 07:04"}


def test_every_page_is_read_and_only_changed_tasks_are_listed(pf, fake_planfix):
    add_tasks(fake_planfix, range(1, 251), T0 + timedelta(minutes=10))    # changed after the look
    add_tasks(fake_planfix, range(300, 340), T0)                           # before it: not listed
    found = pf.changed_since(SINCE)
    assert [f.id for f in found] == [str(n) for n in range(1, 251)]
    assert {f.type for f in found} == {"task"}
    assert found[0].modified.startswith("2026-11-24T07:10Z|") and found[0].raw["id"] == 1
    calls = fake_planfix.received("POST", "/rest/task/list")
    assert [(c.body["offset"], c.body["pageSize"]) for c in calls] == [(0, 100), (100, 100), (200, 100)]
    assert all(c.body["filters"] == calls[0].body["filters"] for c in calls)


def test_a_full_last_page_costs_one_more_request(pf, fake_planfix):
    add_tasks(fake_planfix, range(1, 201), T0 + timedelta(minutes=10))
    assert len(pf.changed_since(SINCE)) == 200
    assert [c.body["offset"] for c in fake_planfix.received("POST", "/rest/task/list")] == [0, 100, 200]


def test_the_minute_of_the_look_is_included(pf, fake_planfix):
    """Planfix gives times to the minute: "gt" the minute before `since`, so a change earlier in
    since's own minute (07:05:10 for since 07:05:30) is still listed."""
    add_tasks(fake_planfix, [1], T0 + timedelta(minutes=4))
    add_tasks(fake_planfix, [2], T0 + timedelta(minutes=5, seconds=10))
    add_tasks(fake_planfix, [3], T0 + timedelta(minutes=6))
    assert [f.id for f in pf.changed_since(SINCE)] == ["2", "3"]


def test_modified_changes_with_the_status_within_the_same_minute(pf, fake_planfix):
    add_tasks(fake_planfix, [1], T0 + timedelta(minutes=7))
    [before] = pf.changed_since(SINCE)
    fake_planfix.touch(1, T0 + timedelta(minutes=7, seconds=40), status={"id": 3})
    [after] = pf.changed_since(SINCE)
    assert before.modified.split("|")[0] == after.modified.split("|")[0] == "2026-11-24T07:07Z"
    assert before.modified != after.modified
    assert pf.changed_since(SINCE) == [after]   # unchanged: the same value again


def test_a_recorded_answer_is_read(pf, fake_planfix):
    fake_planfix.fail(r"/rest/task/list", 200, recorded("api_task_list_changed.json"))
    found = pf.changed_since(SINCE)
    assert [(f.id, f.type, f.modified.split("|")[0]) for f in found] == [
        ("1042", "task", "2026-11-24T07:07Z"), ("2077", "task", "2026-11-24T07:08Z")]


def test_a_server_that_ignores_the_offset_does_not_loop(pf, fake_planfix):
    page = {"result": "success", "tasks": [{"id": n, "dateOfLastUpdate": {"datetime": "2026-11-24T07:07Z"}}
                                           for n in range(100)]}
    fake_planfix.fail(r"/rest/task/list", 200, page, times=5)
    assert len(pf.changed_since(SINCE)) == 100
    assert len(fake_planfix.received("POST", "/rest/task/list")) == 2


@pytest.mark.parametrize("status, payload_name, error, text", [
    (403, "api_error_fail_scope.json", PermanentApiError, "Scope denied"),
    (400, "api_error_daily_limit.json", RetryableApiError, "Planfix code 22"),
    (500, {"result": "fail", "code": 0, "error": "Internal error"}, RetryableApiError, "HTTP 500"),
    (200, {"result": "fail", "code": 41, "error": "Invalid parameter value"}, PermanentApiError, "code 41"),
])
def test_an_error_answer_raises_and_lists_nothing(pf, fake_planfix, status, payload_name, error, text):
    body = recorded(payload_name) if isinstance(payload_name, str) else payload_name
    fake_planfix.fail(r"/rest/task/list", status, body)
    with pytest.raises(error) as exc:
        pf.changed_since(SINCE)
    assert text in str(exc.value) and "POST /task/list" in str(exc.value)


def test_an_error_on_a_later_page_raises_too(pf, fake_planfix):
    add_tasks(fake_planfix, range(1, 151), T0 + timedelta(minutes=10))
    calls = []
    original = fake_planfix._list_tasks

    def second_page_fails(call, m):
        calls.append(call.body["offset"])
        if call.body["offset"] == 100:
            return 503, {"result": "fail", "code": 0, "error": "Service unavailable"}, {}
        return original(call, m)
    fake_planfix.routes = [(meth, pat, second_page_fails if h == original else h)
                           for meth, pat, h in fake_planfix.routes]
    with pytest.raises(RetryableApiError, match="HTTP 503"):
        pf.changed_since(SINCE)
    assert calls == [0, 100]


def test_record_only_lists_nothing_and_calls_nothing(fake_planfix, redis_db):
    conn = Connection(name="agency-pf", type="planfix", base_url=f"{fake_planfix.url}/rest", webhook_secret="s")
    assert planfix.Client(conn, store=redis_db).changed_since(SINCE) is None
    assert fake_planfix.received() == []


def test_the_fake_refuses_a_date_filter_without_a_time(pf, fake_planfix):
    """The fake honours only the documented form; anything else is code 41, like a wrong value."""
    resp = pf.session.post(f"{fake_planfix.url}/rest/task/list", json={"filters": [
        {"type": 38, "operator": "gt", "value": {"dateType": "otherDate_withTime", "dateFrom": "24-11-2026"}}]})
    assert resp.status_code == 400 and resp.json()["code"] == 41


# --- end to end: a lost status webhook, caught up --------------------------------------------------

CONNECTIONS = """
connections:
  agency-pf:
    type: planfix
    base_url: ${PF_URL}
    webhook_secret: ${PF_SECRET}
    credentials:
      token: ${PF_TOKEN}
    options:
      timezone: Europe/Kyiv
      rate_per_second: 50
      burst: 50
      catch_up: {every: 5 minutes}
"""
RULES = """
rules:
  - name: Task done → comment
    on: {event: stage.changed, connection: agency-pf, stage: "Завершена"}
    do:
      - add_note: "Задачу завершено (було: {{ entity.previous_stage.name }})"
"""


@pytest.fixture
def pf_runtime(tmp_path, fake_planfix, redis_db, monkeypatch):
    from webhooks import create_app
    (tmp_path / "rules").mkdir()
    (tmp_path / "connections.yaml").write_text(CONNECTIONS, encoding="utf-8")
    (tmp_path / "rules" / "pf.yaml").write_text(RULES, encoding="utf-8")
    fake_planfix.add("task", recorded("api_task_get.json")["task"])   # 1042, "В роботі"
    fake_planfix.touch(1042, T0)
    env = {"PF_URL": f"{fake_planfix.url}/rest", "PF_SECRET": "pf-secret", "PF_TOKEN": "PF-TOKEN"}
    app = create_app(settings=Settings(config_dir=tmp_path, redis_url=TEST_REDIS_URL, redis_prefix="crmbridge-test:",
                                       queue_name="crmbridge-test", environ=env, testing=True))
    monkeypatch.setattr(clock, "now", lambda: T0 + timedelta(minutes=5))
    return app.extensions["crmbridge"]


def comments(fake: FakePlanfix) -> list[str]:
    return [c["description"] for c in fake.comments.get(("task", 1042), [])]


def test_a_lost_status_change_is_caught_up_once(pf_runtime, fake_planfix, monkeypatch):
    rt = pf_runtime
    assert worker.catch_up("agency-pf") == {"accepted": 1, "seen": 0}     # first look: remember the task
    run_worker(rt)
    assert comments(fake_planfix) == []
    # the task is completed in Planfix; the scenario's webhook never arrives
    fake_planfix.touch(1042, T0 + timedelta(minutes=7), status={"id": 3})
    monkeypatch.setattr(clock, "now", lambda: T0 + timedelta(minutes=7, seconds=40))
    assert worker.catch_up("agency-pf") == {"accepted": 1, "seen": 0}
    run_worker(rt)
    assert comments(fake_planfix) == ["Задачу завершено (було: В роботі)"]
    # the next look overlaps the last: the same change is listed again, and is a duplicate
    monkeypatch.setattr(clock, "now", lambda: T0 + timedelta(minutes=12))
    assert worker.catch_up("agency-pf") == {"accepted": 0, "seen": 1}
    run_worker(rt)
    assert comments(fake_planfix) == ["Задачу завершено (було: В роботі)"]
    filters = [c.body["filters"] for c in fake_planfix.received("POST", "/rest/task/list")]
    assert [f[0]["value"]["dateFrom"] for f in filters] == ["24-11-2026 08:59", "24-11-2026 09:03", "24-11-2026 09:05"]


def test_the_planfix_catch_up_is_planned(pf_runtime):
    assert catch_up.ensure(pf_runtime) == ["agency-pf"]
    [job] = pf_runtime.backend.queue.scheduled_job_registry.get_job_ids()
    when = pf_runtime.backend.queue.scheduled_job_registry.get_scheduled_time(job)
    assert when == T0 + timedelta(minutes=10)
