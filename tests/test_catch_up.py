"""Catch-up: records changed since the last look go through the webhooks' own path, so a lost
webhook's stage move is still seen, and a change already handled does nothing twice."""
from __future__ import annotations

import dataclasses

import json
from datetime import datetime, timezone

import pytest

import worker
from connectors.base import RetryableApiError
from tests.b24_app import B24_CONNECTIONS, b24_app
from tests.conftest import run_worker
from tests.fakes_bitrix24 import FakeBitrix24
from pipeline import catch_up, clock

CONNECTIONS = B24_CONNECTIONS + """    options:
      catch_up: {every: 5 minutes}
"""
RULES = """
rules:
  - name: Deal in work → comment
    on: {event: stage.changed, connection: shop-b24, stage: "В работе"}
    do:
      - add_note: "Угода в роботі (з {{ entity.previous_stage.name }})"
"""


@pytest.fixture
def fake_b24():
    server = FakeBitrix24().start()
    server.add("deal", {"ID": "410", "TITLE": "Торт на весілля", "STAGE_ID": "PREPARATION", "CATEGORY_ID": "0",
                        "ASSIGNED_BY_ID": "1", "DATE_MODIFY": "2026-11-24T10:02:00+03:00"})
    yield server
    server.stop()


@pytest.fixture
def b24_runtime(tmp_path, fake_b24, redis_db, monkeypatch):
    app = b24_app(tmp_path, fake_b24, RULES, connections=CONNECTIONS)
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 11, 24, 7, 5, tzinfo=timezone.utc))
    return app.extensions["crmbridge"]


def test_a_lost_stage_move_is_caught_up_once(b24_runtime, fake_b24, monkeypatch):
    rt = b24_runtime
    assert worker.catch_up("shop-b24") == {"accepted": 1, "seen": 0}   # first look: remember the deal
    run_worker(rt)
    assert fake_b24.method_calls("crm.timeline.comment.add") == []
    # the deal moves; Bitrix24's event is lost (it never retries)
    fake_b24.records["deal"][410].update(STAGE_ID="EXECUTING", DATE_MODIFY="2026-11-24T10:07:00+03:00")
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 11, 24, 7, 10, tzinfo=timezone.utc))
    assert worker.catch_up("shop-b24") == {"accepted": 1, "seen": 0}
    run_worker(rt)
    [comment] = fake_b24.method_calls("crm.timeline.comment.add")
    assert comment.body["fields"]["COMMENT"] == "Угода в роботі (з Подготовка документов)"
    # the next look overlaps the last by a minute: the same change is a duplicate, nothing repeats
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 11, 24, 7, 15, tzinfo=timezone.utc))
    fake_b24.records["deal"][410]["DATE_MODIFY"] = "2026-11-24T10:09:30+03:00"
    worker.catch_up("shop-b24")
    run_worker(rt)
    assert len(fake_b24.method_calls("crm.timeline.comment.add")) == 1


def test_catch_ups_are_planned_once_per_slot(b24_runtime):
    rt = b24_runtime
    assert catch_up.ensure(rt) == ["shop-b24"]
    catch_up.ensure(rt)   # a second worker starting
    ids = rt.backend.queue.scheduled_job_registry.get_job_ids()
    assert len(ids) == 1
    [when] = [rt.backend.queue.scheduled_job_registry.get_scheduled_time(i) for i in ids]
    assert when == datetime(2026, 11, 24, 7, 10, tzinfo=timezone.utc)


# --- amoCRM: a catch-up that runs before amoCRM's own, delayed, status webhook ----------------------

AMO_LEAD = {"id": 31926520, "name": "Some test lead", "price": 1000, "status_id": 10216995, "pipeline_id": 2116,
            "responsible_user_id": 938348, "updated_at": 1456820680}
CHANGED_AT = 1456820780   # leads[status][0][last_modified] in the recorded webhook


@pytest.fixture
def amo_catch_up(config_dir, fake_amo, monkeypatch):
    conns = config_dir / "connections.yaml"
    text = conns.read_text(encoding="utf-8")
    conns.write_text(text.replace("    calendar: office\n", "    calendar: office\n    options:\n"
                                  "      catch_up: {every: 5 minutes}\n", 1), encoding="utf-8")
    fake_amo.add_lead(dict(AMO_LEAD))
    return fake_amo


def at(ts: float):
    return lambda: datetime.fromtimestamp(ts, timezone.utc)


def post_status(client, last_modified: int):
    from tests.conftest import payload
    body = payload("amocrm/lead_status_changed_full.form").replace(
        b"last_modified%5D=1456820780", f"last_modified%5D={last_modified}".encode())
    return client.post("/hooks/quickstart-amo?token=amo-secret", data=body,
                       content_type="application/x-www-form-urlencoded")


def test_a_move_caught_up_before_amocrms_delayed_webhook_acts_once(amo_catch_up, client, runtime, fake_tg,
                                                                   monkeypatch):
    monkeypatch.setattr(clock, "now", at(CHANGED_AT - 60))
    assert worker.catch_up("quickstart-amo")["accepted"] == 1       # first look: remember the lead
    run_worker(runtime)
    # the lead moves to "Brief received"; the catch-up sees it before amoCRM's webhook arrives
    amo_catch_up.leads[31926520].update(status_id=10216994, updated_at=CHANGED_AT)
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 120))
    assert worker.catch_up("quickstart-amo")["accepted"] == 1
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 1
    # amoCRM's own status webhook for that same move, late
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 300))
    assert post_status(client, CHANGED_AT).json == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 1
    assert len(fake_tg.method_calls("sendMessage")) == 1
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert [a["reason"] for a in audit if a["what"] == "event.skipped"] == [
        "this stage move was already handled (seen by a catch-up first)"]

    # later the lead really enters the stage again (after leaving it): that move is handled
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 4000))
    assert post_status(client, CHANGED_AT + 3600).json == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 2


def test_a_failed_look_keeps_the_schedule_and_is_retried_with_backoff(b24_runtime, fake_b24, monkeypatch):
    """A look refused by the CRM (Bitrix24 answers 503 QUERY_LIMIT_EXCEEDED) fails its job, which
    RQ tries again with backoff; the next look is planned all the same, so catch-up never stops."""
    rt = b24_runtime
    monkeypatch.setattr(rt, "settings", dataclasses.replace(rt.settings, retry_budget=1.0))   # a look that gives up soon
    fake_b24.fail("crm.deal.list", 503, {"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"},
                  times=50)
    with pytest.raises(RetryableApiError):
        worker.catch_up("shop-b24")
    registry = rt.backend.queue.scheduled_job_registry
    [planned] = registry.get_job_ids()
    assert rt.backend.queue.fetch_job(planned).func_name == "worker.catch_up"
    catch_up.ensure(rt)
    assert registry.get_job_ids() == [planned]                        # one per slot, as before
    job = rt.backend.queue.fetch_job(planned)
    assert job.retries_left == 3 and job.retry_intervals == [10, 60, 300]


def test_history_moves_into_a_stage_entered_again_are_each_acted_on_once(amo_catch_up, client, runtime, fake_tg,
                                                                         monkeypatch):
    """amoCRM's history: the lead enters "Brief received" (no webhook), leaves it, and enters it
    again (that webhook arrives and is handled). The catch-up then reads all three moves: the first
    entry is a move of its own and is acted on, although the stage last seen is that stage; the
    second entry is the webhook's move and is skipped. Two tasks, one per entry."""
    monkeypatch.setattr(clock, "now", at(CHANGED_AT - 60))
    worker.catch_up("quickstart-amo")
    run_worker(runtime)
    for offset, stage in ((10, 10216994), (20, 10216996), (30, 10216994)):
        amo_catch_up.clock = lambda offset=offset: CHANGED_AT + offset
        amo_catch_up.move_lead(31926520, stage)
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 40))
    assert post_status(client, CHANGED_AT + 30).json == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 1
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 120))
    assert worker.catch_up("quickstart-amo")["accepted"] == 3 + 1     # three moves, one update
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 2
    [listed] = amo_catch_up.received("GET", "/api/v4/events")[-1:]
    assert listed.query["filter[type][]"] == ["lead_status_changed"] and listed.query["limit"] == ["100"]
    assert listed.query["filter[created_at][from]"] == [str(CHANGED_AT - 60 - 60)]
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert len([a for a in audit if a["what"] == "event.skipped"]) == 1


def test_a_compact_status_webhook_after_the_history_move_is_skipped(amo_catch_up, client, runtime, fake_tg,
                                                                    monkeypatch):
    """amoCRM's compact status webhook carries no change time (its event's time is its arrival): a
    move the catch-up already read from the history, announced so afterwards, is the same move."""
    monkeypatch.setattr(clock, "now", at(CHANGED_AT - 60))
    worker.catch_up("quickstart-amo")
    run_worker(runtime)
    amo_catch_up.clock = lambda: CHANGED_AT + 10
    amo_catch_up.move_lead(31926520, 10216994)
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 120))
    worker.catch_up("quickstart-amo")
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 1
    monkeypatch.setattr(clock, "now", at(CHANGED_AT + 130))
    compact = {"leads[status][0][id]": 31926520, "leads[status][0][status_id]": 10216994,
               "leads[status][0][pipeline_id]": 2116, "leads[status][0][old_status_id]": 10216995}
    answer = client.post("/hooks/quickstart-amo?token=amo-secret", data=compact)
    assert answer.json == {"accepted": 1, "duplicates": 0}
    run_worker(runtime)
    assert len(amo_catch_up.received("POST", "/api/v4/tasks")) == 1
