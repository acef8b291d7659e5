"""Delayed rules: timers set, fired by the real RQ scheduler on the real Redis, guarded with
fresh CRM data, moved and cancelled by later events."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
from rq import SimpleWorker
from rq.serializers import JSONSerializer

import worker
from queueing import TimerIndex
from tests.conftest import payload, run_worker
from pipeline import clock, timers

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
RULES = """
defaults:
  connection: quickstart-amo
rules:
  - name: Brief reminder
    on: {event: stage.changed, stage: "Brief received"}
    after: 2 hours
    while:
      - stage: "Brief received"
    do:
      - create_task: {text: "Remind the client about the brief", due: 1 hour}

  - name: Meeting reminder
    on: {event: [stage.changed, field.changed], stage: "Brief received"}
    before: {field: "Meeting time", by: 1 hour}
    while:
      - stage: "Brief received"
    do:
      - add_note: "Зустріч о {{ entity.fields['Meeting time'] }}"
"""
LEAD = {"id": 31926520, "name": "Lead", "price": 1, "status_id": 10216994, "pipeline_id": 2116,
        "responsible_user_id": 938348, "custom_fields_values": []}


@pytest.fixture
def config_dir(config_dir):
    (config_dir / "rules" / "quickstart.yaml").unlink()
    (config_dir / "rules" / "timers.yaml").write_text(RULES, encoding="utf-8")
    return config_dir


@pytest.fixture
def at(monkeypatch):
    """Set the worker's clock."""
    def set_clock(moment: datetime) -> None:
        monkeypatch.setattr(clock, "now", lambda: moment)
    return set_clock


def post(live_server: str, name: str, body: bytes | None = None) -> None:
    resp = requests.post(f"{live_server}/hooks/quickstart-amo?token=amo-secret",
                         data=body or payload(name), headers=FORM, timeout=5)
    assert resp.status_code == 200, resp.text


def scheduler_pass(runtime) -> None:
    """One look for due timers (what every worker.py does 5 times a second: the due ones become
    RQ jobs at the front of the queue), then a real RQ worker with its scheduler."""
    runtime.backend.fire_due_timers()
    SimpleWorker([runtime.backend.queue], connection=runtime.store, serializer=JSONSerializer).work(
        burst=True, with_scheduler=True)


def scheduled(runtime) -> list[str]:
    """The timer ids waiting in the schedule (each timer is kept once: there, and its data by id)."""
    return [t.decode() for t in runtime.store.zrange(runtime.keys("timers"), 0, -1)]


def pending(runtime) -> list[dict]:
    return runtime.backend.timers.pending()


def test_timer_fires_through_the_real_scheduler(live_server, runtime, fake_amo, at):
    fake_amo.add_lead(dict(LEAD))
    at(datetime.now(timezone.utc) - timedelta(hours=2, seconds=1))  # so that "after 2 hours" is due now
    post(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    [timer] = pending(runtime)
    assert timer["rule"] == "Brief reminder"
    assert fake_amo.received("POST", "/api/v4/tasks") == []
    at(datetime.now(timezone.utc))
    scheduler_pass(runtime)
    scheduler_pass(runtime)
    [task] = fake_amo.wait_for("POST", "/api/v4/tasks")
    assert task.body[0]["text"] == "Remind the client about the brief"
    assert pending(runtime) == []


def test_guard_checked_with_fresh_data_when_the_timer_fires(live_server, runtime, fake_amo, at):
    fake_amo.add_lead(dict(LEAD))
    at(datetime.now(timezone.utc) - timedelta(hours=3))
    post(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    fake_amo.leads[31926520]["status_id"] = 10216996  # moved on in the CRM; its webhook was lost
    at(datetime.now(timezone.utc))
    [timer] = pending(runtime)
    worker.fire_timer(timer)
    assert fake_amo.received("POST", "/api/v4/tasks") == []
    audit = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert (audit[-1]["what"], audit[-1]["reason"]) == (
        "timer.skipped", "guard no longer holds: stage is 'Proposal approval', not 'Brief received'")
    assert pending(runtime) == []


def test_leaving_the_stage_cancels_the_timer(live_server, runtime, fake_amo, at):
    fake_amo.add_lead(dict(LEAD))
    at(datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    post(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    assert len(pending(runtime)) == 1
    fake_amo.leads[31926520]["status_id"] = 10216996
    moved = payload("amocrm/lead_status_changed_full.form").replace(b"10216994", b"10216996").replace(
        b"1456820780", b"1456820999")
    post(live_server, "", moved)
    run_worker(runtime)
    assert pending(runtime) == [] and scheduled(runtime) == []
    assert runtime.store.hlen(runtime.keys("timer-data")) == 0


def test_meeting_reminder_moves_with_the_meeting(live_server, runtime, fake_amo, at):
    at(datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    lead = dict(LEAD, custom_fields_values=[{"field_id": 7, "field_name": "Meeting time",
                                              "values": [{"value": 1796137200}]}])  # 2026-12-01 15:00 UTC
    fake_amo.add_lead(lead)
    post(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    [meeting] = [t for t in pending(runtime) if t["rule"] == "Meeting reminder"]
    assert datetime.fromisoformat(meeting["fire_at"]) == datetime(2026, 12, 1, 14, tzinfo=timezone.utc)
    # the meeting moves: amoCRM sends a lead update; the worker sees the field change
    lead["custom_fields_values"][0]["values"][0]["value"] = 1796223600  # a day later
    post(live_server, "amocrm/lead_updated_custom_fields.form",
         payload("amocrm/lead_updated_custom_fields.form").replace(b"32966269", b"31926520"))
    run_worker(runtime)
    [moved] = [t for t in pending(runtime) if t["rule"] == "Meeting reminder"]
    assert datetime.fromisoformat(moved["fire_at"]) == datetime(2026, 12, 2, 14, tzinfo=timezone.utc)
    assert moved["timer_id"] == meeting["timer_id"]
    # the timer was moved, not added: the schedule holds the brief and the meeting reminders once
    assert sorted(scheduled(runtime)) == sorted(t["timer_id"] for t in pending(runtime)) and len(scheduled(runtime)) == 2
    # on the schedule at its time and an offset of its own under a millisecond (TimerIndex.score)
    score = runtime.store.zscore(runtime.keys("timers"), moved["timer_id"])
    assert score == TimerIndex.score(moved["timer_id"], moved["fire_at"])
    assert 0 <= score - datetime(2026, 12, 2, 14, tzinfo=UTC).timestamp() < 0.001


def test_a_stale_timer_job_does_nothing(runtime, fake_amo, at, live_server):
    fake_amo.add_lead(dict(LEAD))
    at(datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    post(live_server, "amocrm/lead_status_changed_full.form")
    run_worker(runtime)
    [timer] = [t for t in pending(runtime) if t["rule"] == "Brief reminder"]
    stale = dict(timer, fire_at="2026-11-24T09:00:00+00:00")  # a copy fired by a second scheduler after a move
    assert worker.fire_timer(stale) == {"stale": True}
    assert fake_amo.received("POST", "/api/v4/tasks") == []


DIGEST = """
rules:
  - name: Morning digest
    on: {schedule: {at: "09:00", working_days: true}, connection: quickstart-bot}
    calendar: office
    do:
      - send_message: {connection: quickstart-bot, chat: team, text: "Доброго ранку! {{ data.scheduled_for[:10] }}"}
"""


def test_a_scheduled_rule_ticks_on_working_days_and_reschedules(config_dir, settings, fake_tg, at):
    from webhooks import create_app
    (config_dir / "rules" / "digest.yaml").write_text(DIGEST, encoding="utf-8")
    at(datetime(2026, 11, 27, 12, tzinfo=timezone.utc))  # Friday, after 09:00 in Kyiv
    app = create_app(settings=settings)
    rt = app.extensions["crmbridge"]
    assert timers.ensure_schedules(rt) == 1
    assert timers.ensure_schedules(rt) == 0               # a second worker starting adds nothing
    [tick] = [t for t in pending(rt) if t["entity"]["type"] == "schedule"]
    assert tick["fire_at"] == "2026-11-30T09:00:00+02:00"  # Monday: the weekend is skipped
    at(datetime(2026, 11, 30, 7, 0, 1, tzinfo=timezone.utc))
    worker.fire_timer(tick)
    [sent] = fake_tg.method_calls("sendMessage")
    assert sent.body["text"] == "Доброго ранку! 2026-11-30"
    [nxt] = [t for t in pending(rt) if t["entity"]["type"] == "schedule"]
    assert nxt["fire_at"] == "2026-12-01T09:00:00+02:00"


CANCEL = """
defaults:
  connection: quickstart-amo
rules:
  - name: Brief reminder
    on: {event: stage.changed, stage: "Brief received"}
    after: 2 working days
    cancel_on: {event: message.received, connection: quickstart-bot, entity: "lead:{{ data.text[6:] }}"}
    do:
      - add_note: "Нагадати про бриф"
"""


def test_cancel_on_an_event_about_another_record(config_dir, settings, fake_amo, at, live_server, runtime):
    (config_dir / "rules" / "quickstart.yaml").unlink(missing_ok=True)
    (config_dir / "rules" / "timers.yaml").write_text(CANCEL, encoding="utf-8")
    from webhooks import create_app
    app = create_app(settings=settings)
    rt = app.extensions["crmbridge"]
    client = app.test_client()
    fake_amo.add_lead(dict(LEAD))
    at(datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    client.post("/hooks/quickstart-amo?token=amo-secret", data=payload("amocrm/lead_status_changed_full.form"),
                content_type="application/x-www-form-urlencoded")
    run_worker(rt)
    assert len(pending(rt)) == 1
    update = json.loads(payload("telegram/message_private_text.json"))
    update["message"]["text"] = "/done 31926520"
    client.post("/hooks/quickstart-bot", data=json.dumps(update), content_type="application/json",
                headers={"X-Telegram-Bot-Api-Secret-Token": "tg-secret"})
    run_worker(rt)
    assert pending(rt) == []


def a_timer(runtime, fire_at: datetime, timer_id: str = "timer:t1:quickstart-amo:lead:31926520") -> dict:
    event = {"id": "e1", "connection": "quickstart-amo", "source": "amocrm", "kind": "stage.changed",
             "entity": {"type": "lead", "id": "31926520"}, "data": {}, "raw": None,
             "occurred_at": fire_at.isoformat(), "dedupe_window": None}
    timer = {"rule": "Brief reminder", "rule_id": "t1", "timer_id": timer_id, "fire_at": fire_at.isoformat(),
             "entity": {"type": "lead", "id": "31926520"}, "event": event}
    runtime.backend.schedule(timer)
    return timer


def test_a_timer_is_queued_at_its_exact_time_never_before(runtime):
    when = datetime(2026, 11, 24, 10, 0, 0, 700000, tzinfo=UTC)   # not a whole second
    a_timer(runtime, when)
    assert runtime.backend.fire_due_timers(now=when.timestamp() - 0.001) == 0
    assert runtime.backend.queue.count == 0
    assert runtime.backend.fire_due_timers(now=when.timestamp()) == 1
    [job] = runtime.backend.queue.jobs
    timer_id = "timer:t1:quickstart-amo:lead:31926520"
    assert job.args == [{"timer_id": timer_id, "at": TimerIndex.score(timer_id, when.isoformat())}]
    assert when.timestamp() <= job.args[0]["at"] < when.timestamp() + 0.001


def test_each_timer_is_stored_once_until_it_is_due(runtime):
    a_timer(runtime, datetime(2026, 12, 24, 10, tzinfo=UTC))
    assert runtime.backend.queue.scheduled_job_registry.count == 0 and runtime.backend.queue.count == 0
    assert runtime.store.keys("rq:job:*") == []


def test_two_workers_polling_queue_a_due_timer_once(runtime):
    when = datetime(2026, 11, 24, 10, tzinfo=UTC)
    a_timer(runtime, when)
    later = when.timestamp() + 1
    assert runtime.backend.fire_due_timers(now=later) + runtime.backend.fire_due_timers(now=later) == 1
    assert runtime.backend.queue.count == 1 and pending(runtime) == []   # fired: off the schedule


def test_a_timer_moved_after_it_was_read_is_not_queued_for_its_old_time(runtime):
    when = datetime(2026, 11, 24, 10, tzinfo=UTC)
    timer = a_timer(runtime, when)
    a_timer(runtime, when + timedelta(days=1))                            # moved by an event meanwhile
    assert runtime.backend._claim(timer["timer_id"], when.timestamp()) is None   # a poller that read the old time
    assert runtime.backend.queue.count == 0 and [t["fire_at"] for t in pending(runtime)] == [
        (when + timedelta(days=1)).isoformat()]
    assert timer["timer_id"] == pending(runtime)[0]["timer_id"]


def test_a_queued_timer_that_was_moved_or_cancelled_meanwhile_does_nothing(runtime, fake_amo, at):
    when = datetime(2026, 11, 24, 10, tzinfo=UTC)
    timer = a_timer(runtime, when)
    runtime.backend.fire_due_timers(now=when.timestamp())
    [job] = runtime.backend.queue.jobs
    a_timer(runtime, when + timedelta(hours=1))                           # moved after it was queued
    assert worker.fire_timer(job.args[0]) == {"stale": True}
    runtime.backend.cancel(timer["timer_id"])
    assert worker.fire_timer(job.args[0]) == {"stale": True}
    assert fake_amo.received("POST", "/api/v4/tasks") == []


def test_timers_due_together_run_in_the_order_of_their_times(runtime):
    when = datetime(2026, 11, 24, 10, tzinfo=UTC)
    for minutes in (5, 0, 3):
        a_timer(runtime, when + timedelta(minutes=minutes), timer_id=f"timer:t{minutes}:quickstart-amo:lead:1")
    runtime.backend.queue.enqueue("math.floor", 1.5)                     # a webhook's job waiting already
    assert runtime.backend.fire_due_timers(now=(when + timedelta(minutes=6)).timestamp()) == 3
    assert [j.args[0].get("timer_id") if j.func_name == "worker.fire_timer" else j.func_name
            for j in runtime.backend.queue.jobs] == [
        "timer:t0:quickstart-amo:lead:1", "timer:t3:quickstart-amo:lead:1", "timer:t5:quickstart-amo:lead:1", "math.floor"]


def test_timers_due_at_one_instant_are_queued_mixed_across_connections(runtime):
    """An opening-time herd: 4 connections' 300 timers each, all due at 10:00:00. The first poll's
    200 jobs are not one connection's (timer ids name the connection, and ties on the schedule
    would be taken in id order): each connection has a fair share of them."""
    when = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    connections = ("agency-amo", "clinic-amo", "shop-bitrix", "studio-planfix")
    with runtime.store.pipeline() as pipe:
        for connection in connections:
            for n in range(300):
                entity = {"type": "lead", "id": str(n)}
                runtime.backend.timers.add({"timer_id": f"timer:herd:{connection}:lead:{n}", "rule": "Herd",
                                            "rule_id": "herd", "fire_at": when.isoformat(), "entity": entity,
                                            "event": {"id": f"{connection}:{n}", "connection": connection}}, pipe)
        pipe.execute()
    assert runtime.backend.fire_due_timers(now=when.timestamp() + 1, limit=200) == 200
    firsts = [job.args[0]["timer_id"].split(":")[2] for job in runtime.backend.queue.jobs]
    share = {c: firsts.count(c) for c in connections}
    assert len(firsts) == 200 and all(25 <= n <= 75 for n in share.values()), share


def test_a_timer_kept_at_its_plain_time_before_the_offsets_still_fires(runtime):
    """Timers on the schedule from before scores had an offset are still their own time."""
    when = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    a_timer(runtime, when)
    timer_id = "timer:t1:quickstart-amo:lead:31926520"
    runtime.store.zadd(runtime.keys("timers"), {timer_id: when.timestamp()})   # as kept before
    assert runtime.backend.fire_due_timers(now=when.timestamp()) == 1
    [job] = runtime.backend.queue.jobs
    assert timers.current(runtime, job.args[0]) is not None


def herd(runtime, when: datetime, count: int) -> None:
    with runtime.store.pipeline() as pipe:
        for n in range(count):
            entity = {"type": "lead", "id": str(n)}
            runtime.backend.timers.add({"timer_id": f"timer:herd:quickstart-amo:lead:{n}", "rule": "Herd",
                                        "rule_id": "herd", "fire_at": when.isoformat(), "entity": entity,
                                        "event": {"id": f"e{n}", "connection": "quickstart-amo"}}, pipe)
        pipe.execute()


def test_a_timer_another_poller_claimed_is_left_to_it_when_a_batch_is_queued(runtime):
    when = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    herd(runtime, when, 5)
    runtime.store.set(runtime.keys("timer-claim", "timer:herd:quickstart-amo:lead:2"), "another-poller", ex=10)
    assert runtime.backend.fire_due_timers(now=when.timestamp()) == 4
    queued = sorted(job.args[0]["timer_id"] for job in runtime.backend.queue.jobs)
    assert queued == [f"timer:herd:quickstart-amo:lead:{n}" for n in (0, 1, 3, 4)]
    assert [t.decode() for t in runtime.store.zrange(runtime.keys("timers"), 0, -1)] == [
        "timer:herd:quickstart-amo:lead:2"]                            # still on the schedule for its poller


def test_four_pollers_at_once_queue_each_timer_of_a_herd_once(runtime):
    import threading
    when = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    herd(runtime, when, 900)
    errors = []

    def poll() -> None:
        try:
            while runtime.store.zcard(runtime.keys("timers")):
                runtime.backend.fire_due_timers(now=when.timestamp(), limit=100)
        except Exception as exc:   # pragma: no cover - shown by the assert below
            errors.append(exc)
    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for t in pollers:
        t.start()
    for t in pollers:
        t.join(60)
    ids = [job.args[0]["timer_id"] for job in runtime.backend.queue.jobs]
    assert errors == [] and len(ids) == 900 and len(set(ids)) == 900


def test_a_claim_taken_over_mid_batch_aborts_the_batch_and_the_rest_are_queued_one_by_one(runtime, monkeypatch):
    """A poller that stalled past its claims' expiry: another took one of them meanwhile. The
    batch's MULTI is aborted (WATCH), and each timer is queued on its own if still ours."""
    when = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    herd(runtime, when, 4)
    taken = runtime.keys("timer-claim", "timer:herd:quickstart-amo:lead:1")
    enqueue, calls = runtime.backend.queue.enqueue_call, []

    def enqueue_while_another_takes_a_claim(*args, **kwargs):
        if not calls:
            runtime.store.set(taken, "another-poller", ex=10)
        calls.append(kwargs.get("pipeline") is not None)
        return enqueue(*args, **kwargs)
    monkeypatch.setattr(runtime.backend.queue, "enqueue_call", enqueue_while_another_takes_a_claim)
    assert runtime.backend.fire_due_timers(now=when.timestamp()) == 3
    assert len(calls) == 4 + 3                                         # the aborted batch, then one by one
    queued = sorted(job.args[0]["timer_id"] for job in runtime.backend.queue.jobs)
    assert queued == [f"timer:herd:quickstart-amo:lead:{n}" for n in (0, 2, 3)]
