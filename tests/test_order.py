"""Events about one record are handled in arrival order; other records do not wait."""
from __future__ import annotations

import json
import time

import worker
from tests.conftest import payload
from pipeline import order, stages

FORM = "application/x-www-form-urlencoded"


def status_body(lead: str, stage: str, stamp: str) -> bytes:
    return payload("amocrm/lead_status_changed_full.form").replace(b"31926520", lead.encode()).replace(
        b"10216994", stage.encode()).replace(b"1456820780", stamp.encode())


def queued_payloads(runtime) -> list[dict]:
    return [job.args[0] for job in runtime.backend.queue.jobs]


def deferred_copy(runtime) -> dict:
    """The payload of the (only) deferred copy of an event, as RQ's scheduler will queue it."""
    from rq.job import Job
    from rq.serializers import JSONSerializer
    [job_id] = runtime.backend.queue.scheduled_job_registry.get_job_ids()
    return Job.fetch(job_id, connection=runtime.store, serializer=JSONSerializer).args[0]


def test_intake_numbers_events_per_record(client, runtime):
    for lead, stage, stamp in (("1", "10216994", "1"), ("1", "10216996", "2"), ("2", "10216994", "3")):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body(lead, stage, stamp), content_type=FORM)
    assert [(p["entity"]["id"], runtime.backend.order.seq(p)) for p in queued_payloads(runtime)] == [
        ("1", 1), ("1", 2), ("2", 1)]


def test_a_later_event_waits_for_the_earlier_one(client, runtime, fake_amo, monkeypatch):
    monkeypatch.setattr(order, "ORDER_POLL", 0.05)
    for stage, stamp in (("10216994", "1"), ("10216996", "2")):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("7", stage, stamp), content_type=FORM)
    first, second = queued_payloads(runtime)
    assert worker.handle_event(dict(second)) == {"deferred": True}
    assert fake_amo.received("POST", "/api/v4/tasks") == []          # nothing done out of turn
    [deferred] = runtime.backend.queue.scheduled_job_registry.get_job_ids()
    assert deferred.startswith("crmbridge-event-")
    worker.handle_event(first)                                       # "Brief received": the rule acts
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert worker.handle_event(dict(second)) == {"superseded": True}  # the original job again: its copy does it
    outcome = worker.handle_event(deferred_copy(runtime))            # now it is its turn
    assert "deferred" not in outcome and "superseded" not in outcome
    moves = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    assert [m["what"] for m in moves].count("rule.matched") == 1


def test_other_records_do_not_wait(client, runtime, monkeypatch):
    monkeypatch.setattr(order, "ORDER_POLL", 0.05)
    for lead, stamp in (("8", "1"), ("8", "2"), ("9", "3")):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body(lead, "10216996", stamp), content_type=FORM)
    *_, other = queued_payloads(runtime)
    assert "deferred" not in worker.handle_event(other)


def test_a_dead_lettered_event_releases_the_next(client, runtime, monkeypatch):
    monkeypatch.setattr(order, "ORDER_POLL", 0.05)
    for stamp in ("1", "2"):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("5", "10216996", stamp), content_type=FORM)
    first, second = queued_payloads(runtime)

    class Job:  # what RQ hands the failure callback once retries are exhausted
        retries_left = 0
        func_name = "worker.handle_event"
        args = [first]
    worker.on_job_failed(Job, runtime.store, RuntimeError, RuntimeError("boom"), None)
    assert "deferred" not in worker.handle_event(second)
    assert runtime.store.hexists(runtime.keys("dead"), first["id"])


def marks_for(runtime, lead: str, undo_stage: str) -> tuple[dict, dict]:
    """A queued stage change of `lead` and crmbridge's undo mark for the stage it enters."""
    runtime.store.set(runtime.keys("undo", "quickstart-amo", f"lead:{lead}"), undo_stage)
    [queued] = [p for p in queued_payloads(runtime) if p["entity"]["id"] == lead]
    return queued, {"stage": {"id": undo_stage, "name": "x"}}


def test_marks_read_with_the_turn_check_are_not_trusted_on_a_deferred_run(client, runtime):
    """A deferred event's payload carries its number: the turn check reads no marks then, and
    stage_marks must read them itself (crmbridge's own undo must still be recognised)."""
    client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("8", "10216994", "1"), content_type=FORM)
    queued, view = marks_for(runtime, "8", "10216994")
    queued["seq"] = runtime.backend.order.seq(queued)          # as defer_event re-queues it
    turn = order.take_turn(runtime, queued)
    assert turn.ready and turn.marks is None
    event = worker.Event.from_dict(queued)
    stages.already_handled(runtime, event, view, turn.marks)
    assert event.data.get("undo") is True


def test_marks_read_while_waiting_for_an_earlier_event_are_read_again(client, runtime, monkeypatch):
    """Marks read on the first look, before the record's earlier event was done, are stale: that
    event may write them (its undo move). They are read again once it is this event's turn."""
    import threading
    for stage, stamp in (("10216994", "1"), ("10216996", "2")):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("9", stage, stamp), content_type=FORM)
    first, second = queued_payloads(runtime)

    def earlier_event_finishes():   # its rule moved the record back with undo, then it was done
        runtime.store.set(runtime.keys("undo", "quickstart-amo", "lead:9"), "10216996")
        runtime.backend.order.done(dict(first))
    timer = threading.Timer(0.15, earlier_event_finishes)
    timer.start()
    turn = order.take_turn(runtime, second)
    assert turn.ready and turn.marks is None
    timer.join()
    event = worker.Event.from_dict(second)
    stages.already_handled(runtime, event, {"stage": {"id": "10216996", "name": "x"}}, turn.marks)
    assert event.data.get("undo") is True


def test_marks_read_with_the_first_turn_check_serve_the_stage_check(client, runtime):
    """On the look that finds it the turn, the marks come with the turn's check (no second read)."""
    client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("10", "10216994", "1"), content_type=FORM)
    queued, view = marks_for(runtime, "10", "10216994")
    turn = order.take_turn(runtime, queued)
    assert turn.ready and turn.marks == stages.Marks(undo=b"10216994", seen=None)
    event = worker.Event.from_dict(queued)
    stages.already_handled(runtime, event, view, turn.marks)
    assert event.data.get("undo") is True


def test_an_event_not_yet_its_turn_is_deferred_without_holding_the_worker(client, runtime):
    """The worker polls a quarter second at most, then queues the event again: other records'
    events are not held up behind one record's wait (issue: nothing stalls)."""
    for stamp in ("1", "2"):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("11", "10216996", stamp), content_type=FORM)
    _, second = queued_payloads(runtime)
    started = time.monotonic()
    assert worker.handle_event(dict(second)) == {"deferred": True}
    assert time.monotonic() - started < 1.0
    [deferred] = runtime.backend.queue.scheduled_job_registry.get_job_ids()
    assert deferred.startswith("crmbridge-event-")


def test_a_missing_earlier_event_is_skipped_after_the_gap_timeout_and_audited(client, runtime, fake_amo):
    """Ticket 1 never comes (lost between intake and a worker): ticket 2 waits, deferred, until
    `order_gap_timeout` seconds have passed since it first waited, then goes on and says why."""
    for stamp in ("1", "2"):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("12", "10216994", stamp), content_type=FORM)
    _, second = queued_payloads(runtime)
    second = dict(second, waiting_since=time.time() - runtime.settings.order_gap_timeout + 30)
    assert worker.handle_event(second) == {"deferred": True}      # 30 s left: still waiting
    second = deferred_copy(runtime)                               # the copy it queued runs later
    second["waiting_since"] = time.time() - runtime.settings.order_gap_timeout - 1
    assert "deferred" not in worker.handle_event(second)
    entries = [json.loads(e[b"entry"]) for _, e in runtime.store.xrange(runtime.keys("audit"))]
    [gap] = [e for e in entries if e["what"] == "order.gap_skipped"]
    assert gap["entity"] == "lead:12" and gap["seq"] == 2 and gap["waited"] > runtime.settings.order_gap_timeout
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1         # and its rule acted


def test_the_gap_timeout_is_a_setting():
    from config.settings import Settings
    assert Settings.from_env({}).order_gap_timeout == 60
    assert Settings.from_env({"CRMBRIDGE_ORDER_GAP_TIMEOUT": "15"}).order_gap_timeout == 15


def test_a_deferring_job_given_back_after_its_worker_died_does_not_run_beside_its_copy(client, runtime, fake_amo,
                                                                                         fake_tg, monkeypatch):
    """A job that deferred its event (not its turn yet) and whose worker was killed before RQ recorded
    it finished is given back by the maintenance: it must not run the event beside the deferred copy.
    Both copies run at the same moment (two threads meeting before the steps): one task, one message."""
    import threading
    from pipeline import links
    monkeypatch.setattr(order, "ORDER_POLL", 0.05)
    for stage, stamp in (("10216995", "1"), ("10216994", "2")):
        client.post("/hooks/quickstart-amo?token=amo-secret", data=status_body("21", stage, stamp), content_type=FORM)
    first, second = queued_payloads(runtime)
    assert worker.handle_event(dict(second)) == {"deferred": True}   # the job defers; then its worker dies
    worker.handle_event(first)
    copies = [dict(second), deferred_copy(runtime)]                  # the job given back, and its deferred copy
    gate, real_claim = threading.Barrier(2, timeout=3), links.claim

    def claim_together(rt, event, result):
        try:
            gate.wait()
        except threading.BrokenBarrierError:   # the other copy never got this far
            pass
        return real_claim(rt, event, result)
    monkeypatch.setattr(links, "claim", claim_together)
    outcomes = []
    threads = [threading.Thread(target=lambda p=p: outcomes.append(worker.handle_event(p))) for p in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert {"superseded": True} in outcomes
    assert len(fake_amo.received("POST", "/api/v4/tasks")) == 1
    assert len([c for c in fake_tg.received("POST", r".*/sendMessage")]) == 1
